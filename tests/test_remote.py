"""End-to-end tests of sharing checkpoints through a remote: real git, real git-lfs and a real
giftless LFS server (see DESIGN.md section 5)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import torch

from tests.helpers import Repo, assert_same_object, git_env, seeded_state_dict
from tests.lfs_server import LfsServer

ZERO = "0" * 40
MARKER = "# git-theta pre-push hook"
N, SIZE = 4, 16  # tensors per checkpoint, side of each (float32)


# ----------------------------------------------------------------------------- helpers


def v1() -> dict[str, Any]:
    return seeded_state_dict(N, SIZE, seed=0)


def one_changed(
    base: dict[str, Any], name: str = "layers.1.weight", seed: int = 100
) -> dict[str, Any]:
    """``base`` with only tensor ``name`` replaced by new seeded values."""
    out = dict(base)
    out[name] = torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return out


def save(repo: Repo, state: dict[str, Any], name: str = "model.pt") -> None:
    torch.save(state, repo.path / name)


def commit(repo: Repo, state: dict[str, Any], message: str, name: str = "model.pt") -> str:
    save(repo, state, name)
    return repo.commit_file(name, message)


def load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def assert_checkpoint(path: Path, expected: dict[str, Any]) -> None:
    assert path.is_file(), f"{path} is missing"
    assert not is_manifest(path), f"{path} holds a manifest, not a checkpoint"
    assert_same_object(load(path), expected)


def is_manifest(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"{") and b'"git_theta"' in data


def oids(repo: Repo, rev_path: str) -> dict[str, str]:
    """tensor name -> object oid in the manifest stored at ``rev_path`` (e.g. HEAD:model.pt)."""
    manifest = json.loads(repo.blob(rev_path))
    return {name: rec["storage"]["objects"][0]["oid"] for name, rec in manifest["tensors"].items()}


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
    )


def clone(
    bare: Path, dest: Path, env: dict[str, str] | None = None, check: bool = True
) -> tuple[Repo, subprocess.CompletedProcess[str]]:
    proc = run("git", "clone", "-q", bare, dest, cwd=dest.parent, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return Repo(dest), proc


def clone_without_objects(bare: Path, dest: Path) -> Repo:
    """A clone of ``bare`` with no object and no checkpoint in its work tree: what a
    checkout must download."""
    b, _ = clone(bare, dest)
    for found in (b.path / ".git" / "lfs").rglob("*"):
        if found.is_file():
            found.unlink()
    (b.path / "model.pt").unlink()
    return b


def ls_remote(bare: Path) -> str:
    return run("git", "ls-remote", bare, cwd=bare).stdout


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("git-theta: error: ")]


def local_object_files(repo: Repo) -> list[Path]:
    root = repo.path / ".git" / "lfs" / "theta" / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def head(repo: Repo) -> str:
    return repo.git("rev-parse", "HEAD").stdout.strip()


# ----------------------------------------------------------------------------- 1, 2, 3


def test_clone_rebuilds_every_version(shared: tuple[Repo, Path, LfsServer], tmp_path: Path):
    a, bare, server = shared
    first = v1()
    second = one_changed(first)
    third = seeded_state_dict(N, SIZE, seed=7)
    c1 = commit(a, first, "v1")
    c2 = commit(a, second, "v2: one tensor changed")
    c3 = commit(a, third, "v3: all changed")
    push = a.git("push", "-u", "origin", "main")
    assert "git-theta: uploaded 9 objects to `origin`" in push.stderr
    assert len(server.objects()) == 2 * N + 1
    assert server.objects() == a.objects()

    b, _ = clone(bare, tmp_path / "b")
    assert b.status() == ""
    assert head(b) == c3
    assert_checkpoint(b.path / "model.pt", third)
    assert b.objects() == set(oids(a, f"{c3}:model.pt").values())

    for sha, expected in ((c1, first), (c2, second)):
        b.git("checkout", sha, "--", "model.pt")
        assert_checkpoint(b.path / "model.pt", expected)
    b.git("checkout", "HEAD", "--", "model.pt")
    assert b.status() == ""

    for sha, expected in ((c1, first), (c2, second)):
        b.git("checkout", "-q", sha)
        assert head(b) == sha
        assert_checkpoint(b.path / "model.pt", expected)
        assert b.status() == ""
    assert b.objects() == server.objects()


def test_second_push_uploads_only_the_changed_tensor(shared: tuple[Repo, Path, LfsServer]):
    a, bare, server = shared
    first = v1()
    commit(a, first, "v1")
    a.git("push", "-q", "-u", "origin", "main")
    before = server.objects()
    assert before == set(oids(a, "HEAD:model.pt").values())
    assert len(before) == N

    c2 = commit(a, one_changed(first, "layers.2.weight"), "v2")
    push = a.git("push", "origin", "main")
    after = server.objects()
    assert len(after) == N + 1
    assert after - before == {oids(a, f"{c2}:model.pt")["layers.2.weight"]}
    # only the pushed commit's objects were considered (the first push's are on the remote)
    assert "git-theta: uploaded 4 objects to `origin`" in push.stderr
    assert ls_remote(bare).split()[0] == c2


def test_clone_pushes_back_without_local_install(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    a, bare, server = shared
    first = v1()
    commit(a, first, "v1")
    a.git("push", "-q", "-u", "origin", "main")

    b, _ = clone(bare, tmp_path / "b")
    hook = b.path / ".git" / "hooks" / "pre-push"
    assert MARKER in hook.read_text()
    assert os.access(hook, os.X_OK)
    assert b.git("config", "--local", "--get-regexp", "^filter\\.theta", check=False).stdout == ""

    changed = one_changed(first, "layers.3.weight", seed=55)
    before = server.objects()
    cb = commit(b, changed, "B changes layers.3")
    b.git("push", "-q", "origin", "main")
    assert server.objects() - before == {oids(b, f"{cb}:model.pt")["layers.3.weight"]}
    assert len(server.objects()) == N + 1

    a.git("pull", "-q", "origin", "main")
    assert head(a) == cb
    assert_checkpoint(a.path / "model.pt", changed)
    assert a.status() == ""


# ----------------------------------------------------------------------------- 4


def test_merge_rebase_and_new_branch_push_and_clone(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    a, bare, server = shared
    first = v1()
    a.theta("track", "other.pt")
    a.git("add", ".gitattributes")
    c1 = commit(a, first, "v1, track other.pt")
    a.git("push", "-q", "-u", "origin", "main")
    assert len(server.objects()) == N

    # a merge: `feature` adds other.pt, main changes model.pt; only main is pushed
    o1 = seeded_state_dict(N, SIZE, seed=21)
    a.git("checkout", "-q", "-b", "feature")
    f1 = commit(a, o1, "feature: add other.pt", name="other.pt")
    a.git("checkout", "-q", "main")
    m2 = one_changed(first, "layers.0.weight", seed=22)
    commit(a, m2, "main: change model.pt")
    a.git("merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    merge = head(a)
    assert a.git("rev-parse", "HEAD^2").stdout.strip() == f1
    a.git("push", "-q", "origin", "main")
    assert len(server.objects()) == N + 1 + N
    assert server.objects() == a.objects()

    # a rebase: `topic` (from the feature commit) changes other.pt twice, is rebased onto
    # main, and pushed for the first time as a new branch
    a.git("checkout", "-q", "-b", "topic", f1)
    o2 = one_changed(o1, "layers.1.weight", seed=23)
    o3 = one_changed(o2, "layers.3.weight", seed=24)
    t1 = commit(a, o2, "topic 1", name="other.pt")
    t2 = commit(a, o3, "topic 2", name="other.pt")
    a.git("rebase", "-q", "main")
    rebased = head(a)
    assert rebased not in (t1, t2)
    assert a.git("rev-parse", "HEAD~2").stdout.strip() == merge
    assert_checkpoint(a.path / "other.pt", o3)
    assert_checkpoint(a.path / "model.pt", m2)
    before = server.objects()
    push = a.git("push", "origin", "topic")
    assert "git-theta: uploaded 5 objects to `origin`" in push.stderr
    assert server.objects() - before == {
        oids(a, f"{t1}:other.pt")["layers.1.weight"],
        oids(a, f"{t2}:other.pt")["layers.3.weight"],
    }
    assert len(server.objects()) == 2 * N + 3

    d, _ = clone(bare, tmp_path / "d")
    assert head(d) == merge
    assert_checkpoint(d.path / "model.pt", m2)
    assert_checkpoint(d.path / "other.pt", o1)
    assert d.status() == ""
    d.git("checkout", "-q", "topic")
    assert head(d) == rebased
    assert_checkpoint(d.path / "other.pt", o3)
    assert_checkpoint(d.path / "model.pt", m2)
    assert d.status() == ""
    # the rebased commits carry the pre-rebase commits' checkpoints
    assert d.blob("HEAD~1:other.pt") == a.blob(f"{t1}:other.pt")
    d.git("checkout", "-q", "HEAD~1")
    assert_checkpoint(d.path / "other.pt", o2)
    d.git("checkout", "-q", "main^1")  # main's side of the merge: no other.pt yet
    assert not (d.path / "other.pt").exists()
    assert_checkpoint(d.path / "model.pt", m2)
    assert d.status() == ""
    # d downloaded exactly the objects of what it checked out (not v1's replaced tensor)
    assert d.objects() == server.objects() - {oids(a, f"{c1}:model.pt")["layers.0.weight"]}


# ----------------------------------------------------------------------------- 5


def test_push_with_server_down_fails_before_any_ref_moves(
    shared: tuple[Repo, Path, LfsServer],
):
    a, bare, server = shared
    first = v1()
    c1 = commit(a, first, "v1")
    a.git("push", "-q", "-u", "origin", "main")
    second = one_changed(first)
    c2 = commit(a, second, "v2")
    needed = set(oids(a, "HEAD:model.pt").values())
    refs = ls_remote(bare)
    assert refs.split()[0] == c1
    uploaded = server.objects()

    server.stop()
    push = a.git("push", "origin", "main", check=False)
    assert push.returncode == 1
    url = server.url
    short = c2[:10]
    names = ", ".join(f"`layers.{i}.weight (model.pt in {short})`" for i in range(3))
    (line,) = error_lines(push.stderr)
    assert line.startswith(
        f"git-theta: error: could not upload objects for tensors {names} and 1 more "
        f"to remote `origin` ({url}): git lfs push failed: "
    )
    assert "connection refused" in line
    assert line.endswith(
        ": check that the LFS server is reachable and accepts uploads, then push again"
    )
    assert f"error: failed to push some refs to '{bare}'" in push.stderr
    # nothing moved, nothing lost
    assert ls_remote(bare) == refs
    assert a.git("rev-parse", "origin/main").stdout.strip() == c1
    assert head(a) == c2
    assert a.status() == ""
    assert needed <= a.objects()
    assert_checkpoint(a.path / "model.pt", second)
    assert server.objects() == uploaded

    # once the server is back, the same push goes through
    server.start()
    a.git("push", "-q", "origin", "main")
    assert ls_remote(bare).split()[0] == c2
    assert server.objects() == uploaded | needed


def test_clone_with_server_down_fails_cleanly_and_is_repaired(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    a, bare, server = shared
    first = v1()
    commit(a, first, "v1")
    a.git("push", "-q", "-u", "origin", "main")
    server.stop()

    clones = []
    for name in ("b", "c"):
        b, proc = clone(bare, tmp_path / name, check=False)
        clones.append(b)
        assert proc.returncode == 128
        names = ", ".join(f"`layers.{i}.weight (model.pt)`" for i in range(3))
        (line,) = error_lines(proc.stderr)
        assert line.startswith(
            "git-theta: error: model.pt: could not download objects for tensors "
            f"{names} and 1 more from remote `origin` ({server.url}): git lfs fetch failed: "
        )
        assert "fatal: model.pt: smudge filter theta failed" in proc.stderr
        # no wrong or partial checkpoint: model.pt is absent, no temporary file is left
        assert sorted(os.listdir(b.path)) == [".git", ".gitattributes", ".lfsconfig"]
        assert b.objects() == set()
        assert head(b) == head(a)
    b, c = clones

    server.start()
    # git's own way repairs it once the server is back
    b.git("restore", "--source=HEAD", "--staged", "--worktree", ":/")
    assert_checkpoint(b.path / "model.pt", first)
    assert b.status() == ""

    # so must the command the error message names
    fix = c.theta("checkout", check=False)
    assert (fix.returncode, fix.stderr) == (0, "git-theta: rebuilt model.pt\n")
    assert_checkpoint(c.path / "model.pt", first)
    assert c.status() == ""

    # and the fetch command it names must be one that fetches git-theta's objects:
    # `git lfs fetch origin` downloads nothing (manifests are not LFS pointers)
    assert line.endswith(
        ": check that the LFS server is reachable and has them (`git theta fetch origin`), "
        "then run `git theta checkout`"
    )


def test_object_missing_on_server_is_named(shared: tuple[Repo, Path, LfsServer], tmp_path: Path):
    a, bare, server = shared
    commit(a, v1(), "v1")
    a.git("push", "-q", "-u", "origin", "main")
    victim = oids(a, "HEAD:model.pt")["layers.2.weight"]
    (stored,) = [p for p in server.storage.rglob(victim) if p.is_file()]
    stored.unlink()
    assert len(server.objects()) == N - 1

    b, proc = clone(bare, tmp_path / "b", check=False)
    assert proc.returncode == 128
    (line,) = error_lines(proc.stderr)
    assert line.startswith(
        "git-theta: error: model.pt: could not download objects for tensors "
        f"`layers.2.weight (model.pt)` from remote `origin` ({server.url}): "
    )
    assert "then run `git theta checkout`" in line
    assert sorted(os.listdir(b.path)) == [".git", ".gitattributes", ".lfsconfig"]
    # the objects the server has were downloaded; only the missing one is reported
    assert b.objects() == set(oids(a, "HEAD:model.pt").values()) - {victim}


# ----------------------------------------------------------------------------- 6, 7, 8


def _history(a: Repo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two pushed versions of model.pt with no tensor in common; returns them."""
    first, second = v1(), seeded_state_dict(N, SIZE, seed=9)
    commit(a, first, "v1")
    commit(a, second, "v2: all changed")
    a.git("push", "-q", "-u", "origin", "main")
    return first, second


def test_skip_smudge_clone_then_theta_checkout(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    a, bare, server = shared
    _, second = _history(a)
    b, _ = clone(bare, tmp_path / "b", env={"GIT_THETA_SKIP_SMUDGE": "1"})
    model = b.path / "model.pt"
    assert model.read_bytes().startswith(b"{")
    assert is_manifest(model)
    assert model.read_bytes() == a.blob("HEAD:model.pt")
    assert local_object_files(b) == []
    assert b.status() == ""
    assert MARKER in (b.path / ".git" / "hooks" / "pre-push").read_text()

    normal, _ = clone(bare, tmp_path / "normal")
    rebuilt = b.theta("checkout")
    assert rebuilt.stderr == "git-theta: rebuilt model.pt\n"
    assert model.read_bytes() == (normal.path / "model.pt").read_bytes()
    assert_checkpoint(model, second)
    assert b.objects() == set(oids(a, "HEAD:model.pt").values())
    assert b.git("diff", "--stat").stdout == ""
    again = b.theta("checkout")
    assert again.stderr == "git-theta: nothing to rebuild\n"
    assert model.read_bytes() == (normal.path / "model.pt").read_bytes()
    assert b.status() == ""


def test_clone_without_git_theta_then_install_and_checkout(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    a, bare, server = shared
    _, second = _history(a)
    home = tmp_path / "home2"
    home.mkdir()
    env = git_env(home)  # a user without git-theta in their git config
    b, _ = clone(bare, tmp_path / "b", env=env)
    model = b.path / "model.pt"
    assert model.read_bytes() == a.blob("HEAD:model.pt")
    assert local_object_files(b) == []
    assert not (b.path / ".git" / "hooks" / "pre-push").exists()
    assert run("git", "status", "--porcelain", cwd=b.path, env=env).stdout == ""

    install = run("git", "theta", "install", cwd=b.path, env=env)
    assert install.returncode == 0, install.stderr
    hooks = b.path / ".git" / "hooks"
    assert "hook" not in install.stderr  # a global install touches no repository
    assert not (hooks / "pre-push").exists()
    checkout = run("git", "theta", "checkout", cwd=b.path, env=env)
    assert (checkout.returncode, checkout.stderr) == (0, "git-theta: rebuilt model.pt\n")
    assert MARKER in (hooks / "pre-push").read_text()  # the first git-theta work here adds it
    assert_checkpoint(model, second)
    assert run("git", "status", "--porcelain", cwd=b.path, env=env).stdout == ""


def test_theta_fetch_downloads_exactly_what_head_needs(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    a, bare, server = shared
    _history(a)
    assert len(server.objects()) == 2 * N
    b, _ = clone(bare, tmp_path / "b", env={"GIT_THETA_SKIP_SMUDGE": "1"})
    assert local_object_files(b) == []

    fetch = b.theta("fetch")
    assert fetch.stderr == f"git-theta: fetched {N} objects\n"
    assert len(local_object_files(b)) == N
    assert b.objects() == set(oids(a, "HEAD:model.pt").values())
    again = b.theta("fetch")
    assert again.stderr == "git-theta: all objects are already local\n"
    assert len(local_object_files(b)) == N
    # fetching leaves the work tree alone
    assert is_manifest(b.path / "model.pt")
    assert b.status() == ""

    older = b.theta("fetch", "origin", "HEAD~1")
    assert older.stderr == f"git-theta: fetched {N} objects\n"
    assert b.objects() == server.objects()


# ----------------------------------------------------------------------------- 9


def test_user_pre_push_hook_is_chained_and_restored(lfs_server: LfsServer, tmp_path: Path):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    d = Repo.init(tmp_path / "d")
    d.git("remote", "add", "origin", str(bare))
    log = tmp_path / "hook.log"
    hook = d.path / ".git" / "hooks" / "pre-push"
    user_hook = f'#!/bin/sh\necho "$1 $2" >> "{log}"\ncat >> "{log}"\n'.encode()
    hook.write_bytes(user_hook)
    hook.chmod(0o755)

    install = d.theta("install", "--local")
    assert f"git-theta: pre-push hook installed in {hook.parent}" in install.stderr
    saved = hook.parent / "pre-push.pre-theta"
    assert saved.read_bytes() == user_hook
    assert MARKER in hook.read_text()

    d.theta("track", "model.pt")
    (d.path / ".lfsconfig").write_text(f"[lfs]\n\turl = {lfs_server.url}\n")
    d.git("add", ".gitattributes", ".lfsconfig")
    sha = commit(d, v1(), "v1")
    push = d.git("push", "-u", "origin", "main")
    assert f"git-theta: uploaded {N} objects to `origin`" in push.stderr
    assert lfs_server.objects() == set(oids(d, "HEAD:model.pt").values())
    assert log.read_text() == f"origin {bare}\nrefs/heads/main {sha} refs/heads/main {ZERO}\n"

    uninstall = d.theta("uninstall", "--local")
    assert f"git-theta: pre-push hook removed from {hook.parent}" in uninstall.stderr
    assert hook.read_bytes() == user_hook
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    assert not saved.exists()


def test_push_uploads_objects_of_manifests_at_paths_no_longer_tracked(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
):
    """The pre-push hook finds manifests by content, not by today's .gitattributes: a commit
    made while a pattern was tracked still sends its objects after `untrack`."""
    a, bare, server = shared
    first = v1()
    commit(a, first, "v1")
    a.theta("untrack", "model.pt")
    a.git("commit", "-q", "-m", "stop tracking", "--", ".gitattributes")
    push = a.git("push", "-q", "origin", "main")
    assert f"git-theta: uploaded {N} objects to `origin`" in push.stderr
    assert server.objects() == a.objects() and len(server.objects()) == N
    b, _ = clone(bare, tmp_path / "b")
    b.git("checkout", "-q", "HEAD~1")  # back where the pattern was tracked
    (b.path / "model.pt").unlink()  # the same blob at both commits: checkout left it alone
    b.git("checkout", "-q", "--", "model.pt")
    assert_checkpoint(b.path / "model.pt", first)


def _batches(server: LfsServer) -> int:
    """Batch API requests the server has answered so far (from its request log)."""
    return server.log.read_text(errors="replace").count("/objects/batch")


def test_checkout_and_clone_of_many_checkpoints_fetch_in_one_batch(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, server = shared
    a.theta("track", "ckpt/*.pt")
    states = {f"ckpt/{i}.pt": seeded_state_dict(N, SIZE, seed=10 + i) for i in range(8)}
    (a.path / "ckpt").mkdir()
    for name, state in states.items():
        save(a, state, name)
    a.git("add", ".gitattributes", "ckpt")
    a.git("commit", "-q", "-m", "8 checkpoints")
    a.git("push", "-q", "-u", "origin", "main")
    before = _batches(server)
    b, _ = clone(bare, tmp_path / "b")  # the clone's checkout: one batch for all 8
    assert _batches(server) - before == 1
    for name, state in states.items():
        assert_checkpoint(b.path / name, state)
    assert b.status() == ""
    # a checkout of 8 checkpoints whose objects are missing locally: one batch
    shutil.rmtree(b.path / ".git" / "lfs")
    for name in states:
        (b.path / name).unlink()
    before = _batches(server)
    b.git("checkout", "--", "ckpt")
    assert _batches(server) - before == 1
    for name, state in states.items():
        assert_checkpoint(b.path / name, state)
    assert b.status() == ""
