"""What changed inside a checkpoint: git's own `git diff`, `git log -p` and `git show`
through git-theta's diff driver and textconv, and `git theta diff/log/show`; figures
checked against numpy."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.helpers import Repo, on_a_terminal, seeded_state_dict
from tests.lfs_server import LfsServer


def v1() -> dict[str, Any]:
    return {"model": seeded_state_dict(3, 4, seed=0), "epoch": 7}


def edited(state: dict[str, Any]) -> dict[str, Any]:
    """layers.0 scaled by 3, layers.2 removed, head added, epoch 8."""
    model = dict(state["model"])
    model["layers.0.weight"] = model["layers.0.weight"] * 3
    del model["layers.2.weight"]
    model["head.bias"] = torch.zeros(5)
    return {"model": model, "epoch": 8}


def save(repo: Repo, state: Any) -> None:
    torch.save(state, repo.path / "model.pt")


def figures(old: torch.Tensor, new: torch.Tensor) -> tuple[int, float, float]:
    a, b = old.numpy().astype(np.float64), new.numpy().astype(np.float64)
    changed = int(np.count_nonzero(old.numpy().view(np.uint32) != new.numpy().view(np.uint32)))
    return changed, float(np.linalg.norm(b - a)), float(np.linalg.norm(a))


def expected_driver_text(old: dict[str, Any], new: dict[str, Any]) -> str:
    name = "layers.0.weight"
    changed, l2, old_l2 = figures(old["model"][name], new["model"][name])
    return (
        "diff --theta a/model.pt b/model.pt\n"
        "A model/head.bias float32 [5]\n"
        f"M model/layers.0.weight float32 [4, 4]: {100 * changed / 16:.3g}% of 16 entries "
        f"changed, ‖Δ‖ {l2:.6g} ({100 * l2 / old_l2:.4g}% of ‖old‖)\n"
        "D model/layers.2.weight float32 [4, 4]\n"
        "~ epoch: 7 → 8\n"
        "= 1 added, 1 removed, 1 modified tensors; 1 values changed\n"
    )


def two_commits(repo: Repo) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """v1 then its edit, committed; returns both states and both commits."""
    old = v1()
    save(repo, old)
    first = repo.commit_file("model.pt", "v1")
    new = edited(old)
    save(repo, new)
    return old, new, first, repo.commit_file("model.pt", "v2")


def test_git_diff_log_and_show_say_what_changed(repo: Repo) -> None:
    old = v1()
    save(repo, old)
    repo.commit_file("model.pt", "v1")
    new = edited(old)
    save(repo, new)
    text = expected_driver_text(old, new)
    assert repo.git("diff").stdout == text  # work tree against the index
    repo.git("add", "model.pt")
    assert repo.git("diff").stdout == ""
    assert repo.git("diff", "--cached").stdout == text
    repo.git("commit", "-q", "-m", "v2")
    assert repo.git("diff", "HEAD~1", "HEAD").stdout == text

    # git log -p and git show run no external diff: they show the textconv's lines
    patch = repo.git("log", "-p", "-1", "--format=").stdout
    body = patch[patch.index("@@") :]
    lines = body.splitlines()[1:]
    assert lines[0] == " checkpoint pytorch, 3 tensors"
    changed = sorted(
        ln[:1] + ln.split()[1] for ln in lines if ln.startswith(("-tensor", "+tensor"))
    )
    assert changed == [
        "+model/head.bias",
        "+model/layers.0.weight",
        "-model/layers.0.weight",
        "-model/layers.2.weight",
    ]
    assert "-value epoch: 7" in lines and "+value epoch: 8" in lines
    assert repo.git("show", "--format=").stdout == patch


def test_an_unchanged_checkpoint_shows_nothing_and_a_dtype_change_says_so(repo: Repo) -> None:
    state = v1()
    save(repo, state)
    repo.commit_file("model.pt", "v1")
    save(repo, {"model": dict(state["model"]), "epoch": 7})  # saved again, same content
    assert repo.git("diff").stdout == ""
    assert repo.theta("diff", "--exit-code").returncode == 0
    changed = dict(state["model"])
    changed["layers.1.weight"] = changed["layers.1.weight"].half()
    changed["layers.2.weight"] = changed["layers.2.weight"].reshape(2, 8)
    save(repo, {"model": changed, "epoch": 7})
    assert repo.git("diff").stdout == (
        "diff --theta a/model.pt b/model.pt\n"
        "M model/layers.1.weight float32 [4, 4] → float16 [4, 4]\n"
        "M model/layers.2.weight float32 [4, 4] → float32 [2, 8]\n"
        "= 0 added, 0 removed, 2 modified tensors; 0 values changed\n"
    )


def test_theta_diff_stat_name_only_json_and_exit_code(repo: Repo) -> None:
    old, new, _, _ = two_commits(repo)

    assert repo.theta("diff", "HEAD~1", "HEAD").stdout == expected_driver_text(old, new)
    assert repo.theta("diff", "HEAD~1", "HEAD", "--stat").stdout == (
        " model.pt | 1 added, 1 removed, 1 modified, 1 values; 148 B changed\n"
        " 1 checkpoints changed\n"
    )
    assert repo.theta("diff", "HEAD~1", "--name-only").stdout == "model.pt\n"
    proc = repo.theta("diff", "HEAD~1", "HEAD", "--exit-code", check=False)
    assert proc.returncode == 1
    assert repo.theta("diff", "HEAD", "HEAD", "--exit-code").stdout == ""

    document = json.loads(repo.theta("diff", "HEAD~1", "HEAD", "--format", "json").stdout)
    assert document["git_theta_diff"] == 1
    (entry,) = document["files"]
    assert entry["path"] == "model.pt"
    by_name = {t["name"]: t for t in entry["tensors"]}
    scaled = by_name["model/layers.0.weight"]
    changed, l2, old_l2 = figures(old["model"]["layers.0.weight"], new["model"]["layers.0.weight"])
    assert scaled["status"] == "modified"
    assert scaled["old"] == scaled["new"] == {"dtype": "float32", "shape": [4, 4]}
    assert (scaled["entries"], scaled["changed_entries"]) == (16, changed)
    assert np.isclose(scaled["l2"], l2, rtol=1e-12) and np.isclose(scaled["old_l2"], old_l2)
    assert np.isclose(scaled["relative_l2"], l2 / old_l2, rtol=1e-12)
    assert by_name["model/head.bias"] == {
        "name": "model/head.bias",
        "status": "added",
        "old": None,
        "new": {"dtype": "float32", "shape": [5]},
        "entries": None,
        "changed_entries": None,
        "l2": None,
        "old_l2": None,
        "relative_l2": None,
        "bytes_changed": 20,
    }
    assert by_name["model/layers.2.weight"]["status"] == "removed"
    assert entry["values"] == [{"path": "epoch", "old": "7", "new": "8"}]
    assert entry["figures_missing"] is None
    assert entry["totals"] == {
        "added": 1,
        "removed": 1,
        "modified": 1,
        "values": 1,
        "bytes_changed": 20 + 64 + 4 * changed,
    }


def test_theta_log_and_show(repo: Repo) -> None:
    _, _, first, second = two_commits(repo)
    lines = repo.theta("log").stdout.splitlines()
    assert lines[0] == f"commit {second} v2"
    assert re.fullmatch(
        r"  model\.pt: 1 added, 1 removed, 1 modified tensors; [\d.]+ (B|KiB) newly stored",
        lines[1],
    )
    assert lines[2] == f"commit {first} v1"
    assert lines[3].startswith("  model.pt: 3 added, 0 removed, 0 modified tensors; ")
    assert len(lines) == 4  # the first commit only tracked the path
    shown = repo.theta("show", "HEAD:model.pt").stdout.splitlines()
    assert shown[0] == "HEAD:model.pt (pytorch, 3 tensors)"
    assert re.fullmatch(r"model/head\.bias  float32  \[5\]  dense  \d+ B", shown[1])
    assert shown[-1].startswith("total: 3 tensors, 148 B logical, ")
    bad = repo.theta("show", "nothing.pt", check=False)
    assert (bad.returncode, bad.stderr) == (
        2,
        "git-theta: error: `nothing.pt` is not in the index: name a revision, `REV:nothing.pt`\n",
    )


def test_show_names_the_view_a_stored_span_is_seen_as(repo: Repo) -> None:
    torch.save({"e": torch.arange(3.0).expand(4, 3), "w": torch.ones(2)}, repo.path / "model.pt")
    repo.commit_file("model.pt", "a view")
    shown = repo.theta("show", "HEAD:model.pt").stdout.splitlines()
    assert re.fullmatch(r"e  float32  \[3\] viewed as \[4, 3\]  dense  \d+ B", shown[1])
    assert re.fullmatch(r"w  float32  \[2\]  dense  \d+ B", shown[2])


def _downloads(server: LfsServer) -> list[str]:
    """Object ids the server handed out (from its request log)."""
    return re.findall(r'"GET [^"]*?([0-9a-f]{64})[^"]*" 200', server.log.read_text())


def test_diff_in_a_clone_fetches_only_the_modified_tensors(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, server = shared
    old = v1()
    save(a, old)
    a.commit_file("model.pt", "v1")
    save(a, edited(old))
    a.commit_file("model.pt", "v2")
    a.git("push", "-q", "origin", "main")
    env = {**os.environ, "GIT_THETA_SKIP_SMUDGE": "1"}
    subprocess.run(["git", "clone", "-q", str(bare), str(tmp_path / "b")], env=env, check=True)
    b = Repo(tmp_path / "b")
    before = len(_downloads(server))
    proc = b.theta("diff", "HEAD~1", "HEAD")
    assert proc.stdout == expected_driver_text(old, edited(old))
    fetched = _downloads(server)[before:]
    manifest_old = json.loads(a.blob("HEAD~1:model.pt"))["tensors"]
    manifest_new = json.loads(a.blob("HEAD:model.pt"))["tensors"]
    name = "model/layers.0.weight"
    wanted = {
        manifest_old[name]["storage"]["objects"][0]["oid"],
        manifest_new[name]["storage"]["objects"][0]["oid"],
    }
    assert sorted(fetched) == sorted(wanted)


def test_figures_missing_are_said_with_the_reason(repo: Repo) -> None:
    two_commits(repo)
    oid = json.loads(repo.blob("HEAD:model.pt"))["tensors"]["model/layers.0.weight"]["storage"][
        "objects"
    ][0]["oid"]
    store = repo.path / ".git" / "lfs" / "theta" / "objects"
    (store / oid[:2] / oid[2:4] / oid).unlink()
    out = repo.theta("diff", "HEAD~1", "HEAD").stdout.splitlines()
    assert "M model/layers.0.weight float32 [4, 4]: figures missing" in out
    assert any(line.startswith("! figures missing: ") and "no remote" in line for line in out)
    assert "D model/layers.2.weight float32 [4, 4]" in out


def _on_a_terminal(repo: Repo, args: list[str], env: dict[str, str]) -> str:
    code, shown = on_a_terminal(args, repo.path, "stdout", env)
    assert code == 0
    return shown.replace("\r\n", "\n")


def test_colour_and_pager_only_on_a_terminal(repo: Repo) -> None:
    two_commits(repo)
    command = ["git", "theta", "diff", "HEAD~1", "HEAD"]
    plain = repo.theta("diff", "HEAD~1", "HEAD").stdout
    assert "\033[" not in plain
    shown = _on_a_terminal(repo, command, {"GIT_PAGER": "cat"})
    assert "\033[32mA model/head.bias float32 [5]\033[m\n" in shown
    assert "\033[31mD model/layers.2.weight float32 [4, 4]\033[m\n" in shown
    paged = _on_a_terminal(repo, command, {"GIT_PAGER": "sed 's/^/paged: /'"})
    assert paged.splitlines()[0] == "paged: \033[1mdiff --theta a/model.pt b/model.pt\033[m"


def test_added_deleted_reversed_and_unmerged_files(repo: Repo) -> None:
    old, new, _, _ = two_commits(repo)
    (repo.path / "model.pt").unlink()
    deleted = repo.git("diff").stdout.splitlines()  # the work-tree file is gone
    assert deleted[0] == "diff --theta a/model.pt b/model.pt"
    assert deleted[1:4] == [
        "D model/head.bias float32 [5]",
        "D model/layers.0.weight float32 [4, 4]",
        "D model/layers.1.weight float32 [4, 4]",
    ]
    repo.git("checkout", "--", "model.pt")
    reversed_text = repo.git("diff", "-R", "HEAD~1").stdout  # the old side is the work tree
    assert "D model/head.bias float32 [5]\n" in reversed_text
    assert "A model/layers.2.weight float32 [4, 4]\n" in reversed_text
    assert "~ epoch: 8 → 7\n" in reversed_text
    repo.theta("track", "other.pt")
    save(repo, v1())
    (repo.path / "model.pt").rename(repo.path / "other.pt")
    repo.git("checkout", "--", "model.pt")
    repo.git("add", ".gitattributes", "other.pt")
    added = repo.git("diff", "--cached").stdout
    assert "diff --theta a/other.pt b/other.pt\nA model/layers.0.weight float32 [4, 4]\n" in added
    assert repo.theta("diff", "--cached", "--name-only", "--", "other.pt").stdout == "other.pt\n"
    assert repo.theta("log", "--", "other.pt").stdout == ""  # not committed yet
    assert repo.theta("log", "--", "model.pt").stdout.count("commit ") == 2


def test_a_conflicted_checkpoint_is_reported_unmerged(repo: Repo) -> None:
    old = v1()
    save(repo, old)
    repo.commit_file("model.pt", "v1")
    repo.git("checkout", "-q", "-b", "other")
    save(repo, {**old, "epoch": 9})
    repo.commit_file("model.pt", "other")
    repo.git("checkout", "-q", "main")
    save(repo, {**old, "epoch": 8})
    repo.commit_file("model.pt", "main")
    assert subprocess.run(["git", "merge", "other"], cwd=repo.path, capture_output=True).returncode
    assert repo.theta("diff").stdout == "* Unmerged path model.pt\n"


def test_figures_of_unchanged_nan_and_of_large_integers(repo: Repo) -> None:
    nan = torch.tensor([float("nan"), 1.0, float("inf")])
    big = torch.tensor([2**60, -(2**62), 5], dtype=torch.int64)
    save(repo, {"f": nan, "i": big})
    repo.commit_file("model.pt", "v1")
    save(repo, {"f": torch.tensor([float("nan"), 4.0, float("inf")]), "i": big + 1})
    document = json.loads(repo.theta("diff", "--format", "json").stdout)
    by_name = {t["name"]: t for t in document["files"][0]["tensors"]}
    assert (by_name["f"]["changed_entries"], by_name["f"]["l2"]) == (1, 3.0)
    assert (by_name["i"]["changed_entries"], by_name["i"]["l2"]) == (3, 3**0.5)
    assert "RuntimeWarning" not in repo.git("diff").stderr


def test_history_from_before_the_path_was_tracked_does_not_stop_git_log(repo: Repo) -> None:
    repo.git("rm", "-q", "--cached", ".gitattributes")
    (repo.path / ".gitattributes").rename(repo.path / "attributes.saved")
    (repo.path / "model.pt").write_text("a plain text file, before tracking\n")
    repo.commit_file("model.pt", "plain")
    save(repo, v1())
    (repo.path / "attributes.saved").rename(repo.path / ".gitattributes")
    repo.git("add", ".gitattributes", "model.pt")
    repo.git("commit", "-q", "-m", "a checkpoint now")
    proc = repo.git("log", "-p", "-1", "--format=")
    assert "-not a checkpoint (35 bytes, sha256 " in proc.stdout
    assert "+checkpoint pytorch, 3 tensors" in proc.stdout


def test_revision_ranges_and_paths_relative_to_a_subdirectory(repo: Repo) -> None:
    old, new, first, second = two_commits(repo)
    text = expected_driver_text(old, new)
    assert repo.theta("diff", "HEAD~1..HEAD").stdout == text
    assert repo.theta("diff", f"{first}...{second}").stdout == text
    sub = repo.path / "sub"
    sub.mkdir()
    shown = subprocess.run(
        ["git", "theta", "show", "HEAD:./../model.pt"], cwd=sub, capture_output=True, text=True
    )
    assert shown.stdout.startswith("HEAD:./../model.pt (pytorch, 3 tensors)\n"), shown.stderr
