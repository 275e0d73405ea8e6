"""The Python API: `git_theta.load` and `git_theta.open` of any revision from a work tree,
a bare repository or a git URL, fetching only what is asked for. Real git, git-lfs and a
loopback LFS server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import git_theta
from git_theta.errors import UsageError
from tests.helpers import Repo, assert_same_object
from tests.lfs_server import LfsServer
from tests.test_remote import clone_without_objects


def _model(seed: int) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return OrderedDict(net.state_dict())


def _commit(repo: Repo, state: object, message: str, tag: str | None = None) -> None:
    torch.save(state, repo.path / "model.pt")
    repo.commit_file("model.pt", message)
    if tag:
        repo.git("tag", tag)


def test_load_gives_what_torch_load_gives_at_any_revision(repo: Repo) -> None:
    v1 = {"model": _model(0), "epoch": 1, "lr": 0.1, "tied": None}
    v1["tied"] = v1["model"]["0.weight"]
    _commit(repo, v1, "v1", tag="v1")
    transposed = {"w": torch.randn(3, 5).t(), "b": torch.ones(2)}
    _commit(repo, transposed, "v2")
    back = git_theta.load("model.pt", rev="v1", repo=repo.path, framework="torch")
    assert_same_object(v1, back)
    assert back["tied"] is back["model"]["0.weight"]
    now = git_theta.load("model.pt", repo=repo.path, framework="torch")
    assert now["w"].stride() == transposed["w"].stride() and torch.equal(now["w"], transposed["w"])
    arrays = git_theta.load("model.pt", rev="v1", repo=repo.path)
    assert isinstance(arrays["model"]["2.bias"], np.ndarray)
    assert arrays["model"]["2.bias"].tobytes() == v1["model"]["2.bias"].numpy().tobytes()
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    v1_again = git_theta.load("model.pt", rev="v1~0", repo=repo.path, framework="torch")
    net.load_state_dict(v1_again["model"])
    assert repo.status() == ""


def test_open_lists_without_reading_and_errors_name_the_fix(repo: Repo) -> None:
    _commit(repo, _model(0), "v1")
    checkpoint = git_theta.open("model.pt", repo=repo.path)
    assert sorted(checkpoint) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert (checkpoint.dtype("0.weight"), checkpoint.shape("0.weight")) == ("float32", (16, 8))
    with pytest.raises(UsageError) as info:
        git_theta.load("model.pt", names=["nope"], repo=repo.path)
    assert str(info.value).startswith("`model.pt` at ")
    assert "has no tensor `nope`: it has `0.bias`, `0.weight`" in str(info.value)
    with pytest.raises(UsageError) as info:
        git_theta.load("model.pt", rev="v9", repo=repo.path)
    assert str(info.value) == (
        f"revision `v9` is not in {repo.path}: name a branch, tag or commit it has"
    )
    with pytest.raises(UsageError) as info:
        git_theta.load("other.pt", repo=repo.path)
    assert "`other.pt` is not in revision" in str(info.value)


@pytest.mark.timeout(300)
def test_load_fetches_only_the_objects_asked_for_and_urls_are_cached(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, bare, server = shared
    state = _model(1)
    _commit(a, state, "v1", tag="v1")
    a.git("push", "-q", "origin", "main", "v1")
    oids = {
        name: r["storage"]["objects"][0]["oid"]
        for name, r in __import__("json").loads(a.blob("HEAD:model.pt"))["tensors"].items()
    }
    b = clone_without_objects(bare, tmp_path / "b")
    before = len(server.downloads())
    one = git_theta.load("model.pt", names=["2.bias"], repo=b.path, framework="torch")
    assert torch.equal(one["2.bias"], state["2.bias"])
    assert server.downloads()[before:] == [oids["2.bias"]]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"file://{bare}"
    before = len(server.downloads())
    loaded = git_theta.load("model.pt", rev="v1", repo=url, framework="torch")
    assert_same_object(state, loaded)
    assert sorted(server.downloads()[before:]) == sorted(oids.values())
    requests = len(server.requests())
    again = git_theta.load("model.pt", rev="v1", repo=url, framework="torch")
    assert_same_object(state, again)
    assert len(server.requests()) == requests  # nothing fetched the second time
    assert len(list((tmp_path / "cache" / "git-theta" / "repos").iterdir())) == 1


@pytest.mark.timeout(300)
def test_torch_hub_loads_tagged_weights_through_git_theta(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, bare, _ = shared
    tagged = _model(2)
    _commit(a, tagged, "v1", tag="release")
    _commit(a, _model(3), "v2")
    a.git("push", "-q", "origin", "main", "release")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        textwrap.dedent(
            f"""
            import git_theta
            import torch

            dependencies = ["torch"]


            def model():
                net = torch.nn.Sequential(
                    torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
                )
                state = git_theta.load(
                    "model.pt", rev="release", repo={f"file://{bare}"!r}, framework="torch"
                )
                net.load_state_dict(state)
                return net
            """
        )
    )
    net = torch.hub.load(str(hub), "model", source="local")
    assert_same_object(tagged, OrderedDict(net.state_dict()))


@pytest.mark.timeout(600)
def test_open_of_a_2_gib_checkpoint_reads_one_tensor_in_bounded_memory(repo: Repo) -> None:
    state = {f"layer{i}.weight": torch.zeros(64, 1024, 1024, dtype=torch.float32) for i in range(8)}
    state["small"] = torch.arange(10.0)
    torch.save(state, repo.path / "model.pt")
    del state
    repo.commit_file("model.pt", "2 GiB")
    (repo.path / "model.pt").unlink()  # nothing to read but the objects
    script = textwrap.dedent(
        """
        import sys, git_theta

        def peak_kib():  # this process's own peak (a forked child starts from its parent's)
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))

        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak
        checkpoint = git_theta.open("model.pt", repo=sys.argv[1])
        shapes = {n: checkpoint.shape(n) for n in checkpoint}
        before = peak_kib()
        one = checkpoint["layer3.weight"]
        after = peak_kib()
        print(len(shapes), shapes["layer0.weight"], one.shape, float(one.sum()), before, after)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(repo.path)], capture_output=True, text=True, check=True
    )
    count, *_, before_kib, after_kib = proc.stdout.split()
    assert count == "9"
    assert "(64, 1024, 1024)" in proc.stdout
    assert int(before_kib) < 200 * 1024  # listing read no tensor data
    assert int(after_kib) < int(before_kib) + 2 * 256 * 1024 + 64 * 1024  # one 256 MiB tensor


def _sweep_repo(repo: Repo) -> None:
    (repo.path / "notes.txt").write_text("work in progress\n")
    (repo.path / "README").write_text("staged\n")
    repo.git("add", "README")


@pytest.mark.timeout(300)
def test_a_sweep_saves_a_branch_per_setting_without_touching_the_work_tree(repo: Repo) -> None:
    _commit(repo, _model(0), "base")
    _sweep_repo(repo)
    status = repo.status()
    saved: dict[str, list[tuple[str, OrderedDict[str, torch.Tensor]]]] = {}
    for lr in (0.1, 0.01, 0.001):
        branch = f"sweep/lr-{lr}"
        for run in range(2):
            state = _model(int(lr * 1000) + run)
            metadata = {"lr": lr, "run": run, "metrics": {"loss": round(1 / (run + 1), 3)}}
            sha = git_theta.save(
                state,
                "model.pt",
                repo=repo.path,
                message=f"lr {lr} run {run}",
                branch=branch,
                metadata=metadata,
            )
            saved.setdefault(branch, []).append((sha, state))
    assert repo.status() == status  # the work tree and the index as they were
    assert repo.git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"
    runs = {run.branch: run for run in git_theta.runs(repo=repo.path, pattern="sweep/*")}
    assert sorted(runs) == ["sweep/lr-0.001", "sweep/lr-0.01", "sweep/lr-0.1"]
    assert runs["sweep/lr-0.01"].metadata == {"lr": 0.01, "run": 1, "metrics": {"loss": 0.5}}
    assert runs["sweep/lr-0.01"].subject == "lr 0.01 run 1"
    for branch, commits in saved.items():
        count = repo.git("rev-list", "--count", f"main..{branch}").stdout.strip()
        assert count == "2", branch
        assert runs[branch].commit == commits[-1][0]
        for sha, state in commits:
            back = git_theta.load("model.pt", rev=sha, repo=repo.path, framework="torch")
            assert_same_object(state, back)
    table = repo.theta("runs", "sweep/*").stdout.splitlines()
    assert table[0].split() == ["branch", "commit", "date", "lr", "metrics", "run"]
    assert table[1].split()[0] == "sweep/lr-0.001" and table[1].split()[-1] == "1"
    log = repo.theta("log", "sweep/lr-0.1~1..sweep/lr-0.1").stdout
    assert '  lr: 0.1\n  run: 1\n  metrics: {"loss": 0.5}\n' in log
    repo.git("stash", "-q", "--include-untracked")
    repo.git("switch", "-q", "sweep/lr-0.1")  # a saved commit checks out as any other
    assert_same_object(saved["sweep/lr-0.1"][-1][1], torch.load(repo.path / "model.pt"))
    assert repo.status() == ""


def test_save_refuses_what_would_touch_the_work_tree_or_lose_data(repo: Repo) -> None:
    _commit(repo, _model(0), "base")
    with pytest.raises(UsageError) as info:
        git_theta.save(_model(1), "model.pt", repo=repo.path)
    assert "save needs branch=" in str(info.value)
    with pytest.raises(UsageError) as info:
        git_theta.save(_model(1), "model.pt", repo=repo.path, branch="main")
    assert str(info.value).startswith("`main` is checked out here")
    with pytest.raises(UsageError) as info:
        git_theta.save(_model(1), "other.pt", repo=repo.path, branch="b")
    assert "`other.pt` is not tracked by git-theta" in str(info.value)
    with pytest.raises(UsageError) as info:
        git_theta.save(_model(1), "model.pt", repo=repo.path, branch="b", metadata={"a b": 1})
    assert "metadata key 'a b' cannot be a commit trailer" in str(info.value)
    assert repo.git("branch", "--list", "b").stdout == ""


def test_concurrent_saves_to_two_branches_both_land(repo: Repo) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _commit(repo, _model(0), "base")

    def save(branch: str, seed: int) -> str:
        return git_theta.save(_model(seed), "model.pt", repo=repo.path, branch=branch)

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(save, ["x", "y", "x", "y"], [1, 2, 3, 4]))
    assert len(set(done)) == 4
    for branch in ("x", "y"):
        assert repo.git("rev-list", "--count", f"main..{branch}").stdout.strip() == "2"


def test_the_readme_python_examples_run_as_written(repo: Repo) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API") : readme.index("## Supported checkpoints")]
    blocks = [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]
    assert len(blocks) == 4
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(8, 4).state_dict(), repo.path / "model.pt")
    repo.commit_file("model.pt", "v1")
    repo.git("tag", "v1")
    script = "\n".join(blocks) + textwrap.dedent(
        """
        assert torch.equal(net.bias, torch.from_numpy(bias))
        assert sorted(run.branch for run in git_theta.runs(pattern="sweep/*")) == [
            "sweep/lr-0.001", "sweep/lr-0.01"
        ]
        assert (manager.steps(), manager.latest(), manager.best()) == ([2, 3, 4], 4, 4)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=repo.path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["bias float32 (4,)", "weight float32 (4, 8)"]
    assert proc.stdout.splitlines()[-1] == "[2, 3, 4] 4 4"
    assert repo.status() == ""
