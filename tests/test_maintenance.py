"""Nothing lost in everyday git: `git theta fsck`, `git theta gc`, and the real `git lfs
prune`, driven through real git and git-lfs (and a giftless server for the remote cases)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from git_theta.cli.output import size_text
from tests.helpers import Repo, assert_same_object, on_a_terminal, read_only, seeded_state_dict
from tests.lfs_server import LfsServer

N, SIZE = 4, 16  # tensors per checkpoint, side of each (float32)
OBJECTS = Path(".git") / "lfs" / "theta" / "objects"


# ----------------------------------------------------------------------------- helpers


def v1() -> dict[str, Any]:
    return seeded_state_dict(N, SIZE, seed=0)


def changed(base: dict[str, Any], index: int, seed: int) -> dict[str, Any]:
    """``base`` with tensor ``layers.<index>.weight`` replaced by new seeded values."""
    out = dict(base)
    gen = torch.Generator().manual_seed(seed)
    out[f"layers.{index}.weight"] = torch.randn(SIZE, SIZE, generator=gen)
    return out


def save(repo: Repo, state: dict[str, Any]) -> None:
    torch.save(state, repo.path / "model.pt")


def commit(repo: Repo, state: dict[str, Any], message: str) -> str:
    save(repo, state)
    return repo.commit_file("model.pt", message)


def load(repo: Repo) -> Any:
    return torch.load(repo.path / "model.pt", weights_only=True)


def oids(repo: Repo, rev_path: str) -> dict[str, str]:
    """tensor name -> object oid in the manifest at ``rev_path`` (e.g. HEAD:model.pt)."""
    manifest = json.loads(repo.blob(rev_path))
    return {name: rec["storage"]["objects"][0]["oid"] for name, rec in manifest["tensors"].items()}


def object_path(repo: Repo, oid: str) -> Path:
    return repo.path / OBJECTS / oid[:2] / oid[2:4] / oid


def flip_bit(path: Path) -> str:
    """Flip one bit in the middle of ``path``; returns the sha256 its bytes now have."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest()


def summary(manifests: int, tensors: int, objects: int) -> str:
    return (
        f"git-theta: {manifests} manifests, {tensors} distinct tensors, {objects} objects checked"
    )


def all_sound(manifests: int, tensors: int, objects: int) -> str:
    return f"{summary(manifests, tensors, objects)}: all sound\n"


# ----------------------------------------------------------------------------- fsck


def test_fsck_of_a_sound_repository(repo: Repo) -> None:
    state = v1()
    commit(repo, state, "v1")
    commit(repo, changed(state, 1, 100), "v2")
    head = repo.theta("fsck")
    assert (head.stdout, head.stderr) == ("", all_sound(1, 4, 4))
    everything = repo.theta("fsck", "--all")
    assert (everything.stdout, everything.stderr) == ("", all_sound(2, 5, 5))


def test_fsck_names_path_commit_and_tensor_of_each_problem(repo: Repo) -> None:
    state = v1()
    first = commit(repo, state, "v1")
    second = commit(repo, changed(state, 1, 100), "v2")
    old = oids(repo, f"{first}:model.pt")["layers.1.weight"]  # only v1 needs it
    actual = flip_bit(object_path(repo, old))

    assert repo.theta("fsck").returncode == 0  # HEAD and the index do not need it
    proc = repo.theta("fsck", "--all", check=False)
    assert proc.returncode == 1
    assert proc.stdout == (
        f"model.pt in {first[:10]}: tensor `layers.1.weight`: object {old[:12]}… is corrupt: "
        f"its bytes hash to {actual[:12]}…, not to its id\n"
    )
    assert proc.stderr == (
        f"{summary(2, 5, 5)}: 1 problem; run `git theta fsck --fetch` to download good copies "
        "from the remote, or `git add` an intact copy of the checkpoint\n"
    )

    new = oids(repo, f"{second}:model.pt")["layers.1.weight"]
    object_path(repo, new).unlink()
    proc = repo.theta("fsck", check=False)
    assert proc.returncode == 1
    assert proc.stdout == (
        f"model.pt in {second[:10]}: tensor `layers.1.weight`: object {new[:12]}… is missing\n"
    )


def test_fsck_finds_a_tensor_that_does_not_decode_to_its_hash(repo: Repo) -> None:
    state = v1()
    commit(repo, state, "v1")
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    manifest["tensors"]["layers.2.weight"]["hash"] = "ab" * 32  # sound objects, wrong hash
    (repo.path / "model.pt").write_text(json.dumps(manifest))
    second = repo.commit_file("model.pt", "a manifest edited by hand")
    proc = repo.theta("fsck", check=False)
    assert proc.returncode == 1
    assert proc.stdout == (
        f"model.pt in {second[:10]}: tensor `layers.2.weight`: decodes to data that does not "
        "match its recorded hash\n"
    )


def test_fsck_checks_the_index_and_a_stash(repo: Repo) -> None:
    state = v1()
    commit(repo, state, "v1")
    save(repo, changed(state, 3, 300))
    repo.git("add", "model.pt")
    staged = oids(repo, ":model.pt")["layers.3.weight"]
    flip_bit(object_path(repo, staged))
    proc = repo.theta("fsck", check=False)
    assert proc.returncode == 1
    assert proc.stdout == (
        f"model.pt in the index of {repo.path}: tensor `layers.3.weight`: object "
        f"{staged[:12]}… is corrupt: its bytes hash to "
        f"{hashlib.sha256(object_path(repo, staged).read_bytes()).hexdigest()[:12]}…, "
        "not to its id\n"
    )
    repo.git("stash", "-q")  # now only the stash holds it
    path = object_path(repo, staged)
    if hashlib.sha256(path.read_bytes()).hexdigest() == staged:
        flip_bit(path)  # git cleaned the racily-clean file again, which repaired the object
    assert repo.theta("fsck").returncode == 0  # HEAD and the index do not need it
    proc = repo.theta("fsck", "--all", check=False)
    assert proc.returncode == 1
    stash = {repo.git("rev-parse", rev).stdout.strip()[:10] for rev in ("stash@{0}", "stash^2")}
    where, _, what = proc.stdout.partition(": ")
    assert where in {f"model.pt in {commit}" for commit in stash}
    assert what.startswith(f"tensor `layers.3.weight`: object {staged[:12]}… is corrupt")


def test_fsck_shows_progress_on_a_terminal(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    code, shown = on_a_terminal(["git", "theta", "fsck"], repo.path, "stderr")
    assert code == 0
    assert "\rgit-theta: checking objects: 100% (4/4)\x1b[K\r\n" in shown
    assert "\rgit-theta: decoding tensors: 100% (4/4)\x1b[K\r\n" in shown
    # and none when stderr is not a terminal
    assert "checking objects" not in repo.theta("fsck").stderr


def test_checkout_of_a_corrupt_object_fails_and_leaves_no_wrong_file(repo: Repo) -> None:
    state = v1()
    first = commit(repo, state, "v1")
    later = changed(state, 1, 100)
    commit(repo, later, "v2")
    old = oids(repo, f"{first}:model.pt")["layers.1.weight"]
    flip_bit(object_path(repo, old))
    proc = repo.git("checkout", "-q", first, "--", "model.pt", check=False)
    assert proc.returncode != 0
    assert "tensor `layers.1.weight`" in proc.stderr
    assert f"object {old[:12]}…" in proc.stderr
    model = repo.path / "model.pt"
    if model.exists():  # git removes the file it could not write; never a wrong one
        assert_same_object(load(repo), later)
    # `git theta checkout` writes through a temporary file: nothing is left behind
    repo.git("reset", "-q", first, "--", "model.pt")
    model.unlink(missing_ok=True)
    proc = repo.theta("checkout", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("git-theta: error: model.pt: tensor `layers.1.weight`: ")
    assert sorted(p.name for p in repo.path.iterdir()) == [".git", ".gitattributes"]


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_git_add_of_an_intact_copy_repairs_an_object(repo: Repo, damage: str) -> None:
    state = v1()
    commit(repo, state, "v1")
    oid = oids(repo, "HEAD:model.pt")["layers.1.weight"]
    good = object_path(repo, oid).read_bytes()
    if damage == "corrupt":
        flip_bit(object_path(repo, oid))
    else:
        object_path(repo, oid).unlink()
    assert repo.theta("fsck", check=False).returncode == 1
    save(repo, state)  # an intact copy of the checkpoint, written again
    repo.git("add", "model.pt")
    assert object_path(repo, oid).read_bytes() == good
    assert repo.theta("fsck").returncode == 0
    assert repo.status() == ""


def test_fsck_fetch_repairs_from_the_remote(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, _, _ = shared
    state = v1()
    commit(a, state, "v1")
    a.git("push", "-q", "origin", "main")
    corrupt = oids(a, "HEAD:model.pt")["layers.1.weight"]
    missing = oids(a, "HEAD:model.pt")["layers.2.weight"]
    good = object_path(a, corrupt).read_bytes()
    flip_bit(object_path(a, corrupt))
    object_path(a, missing).unlink()
    (a.path / ".git" / "lfs" / "objects" / missing[:2] / missing[2:4] / missing).unlink()

    proc = a.theta("fsck", "--fetch")
    assert proc.stdout == "".join(
        f"repaired object {oid} (downloaded again)\n" for oid in sorted([corrupt, missing])
    )
    assert proc.stderr == all_sound(1, 4, 4)
    assert object_path(a, corrupt).read_bytes() == good
    assert object_path(a, missing).is_file()
    assert [p.name for p in (a.path / ".git" / "lfs" / "tmp").iterdir() if p.is_file()] == []
    (a.path / "model.pt").unlink()
    a.git("checkout", "--", "model.pt")
    assert_same_object(load(a), state)


def test_fsck_fetch_without_a_remote_keeps_what_it_has(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    oid = oids(repo, "HEAD:model.pt")["layers.1.weight"]
    flip_bit(object_path(repo, oid))
    bad = object_path(repo, oid).read_bytes()
    proc = repo.theta("fsck", "--fetch", check=False)
    assert proc.returncode == 1
    assert "is corrupt" in proc.stdout
    assert proc.stderr.splitlines()[0] == (
        "git-theta: fetching failed: there is no remote `origin` (and no lfs.url) to download "
        "from: add the remote the checkpoints came from (`git remote add origin URL`) or name "
        "one with --remote"
    )
    assert object_path(repo, oid).read_bytes() == bad  # set aside, and back again


# ----------------------------------------------------------------------------- gc


def test_gc_frees_exactly_what_a_deleted_branch_needed(repo: Repo) -> None:
    state = v1()
    first = commit(repo, state, "v1")
    repo.git("checkout", "-q", "-b", "side")
    commit(repo, changed(state, 2, 200), "side")
    side_only = oids(repo, "side:model.pt")["layers.2.weight"]
    repo.git("checkout", "-q", "main")
    stashed = changed(state, 3, 300)
    save(repo, stashed)
    repo.git("stash", "-q")
    later = changed(state, 1, 100)
    commit(repo, later, "v2")
    staged = changed(later, 0, 400)
    save(repo, staged)
    repo.git("add", "model.pt")
    repo.git("branch", "-q", "-D", "side")
    before = repo.objects()
    size = object_path(repo, side_only).stat().st_size

    # HEAD's reflog still names the side branch's commit
    assert repo.theta("gc", "--prune=now").stdout == ""
    repo.git("reflog", "expire", "--expire=now", "--all")

    dry = repo.theta("gc", "--dry-run", "--prune=now")
    assert dry.stdout == f"would delete object {side_only} ({size_text(size)})\n"
    assert dry.stderr == f"git-theta: would free {size_text(size)}\n"
    assert repo.objects() == before
    young = repo.theta("gc")  # default expiry: two weeks; the object is younger
    assert (young.stdout, young.stderr) == (
        "",
        "git-theta: freed 0 B (0 files); 1 newer than the expiry kept\n",
    )
    proc = repo.theta("gc", "--prune=now")
    assert proc.stdout == f"deleted object {side_only} ({size_text(size)})\n"
    assert proc.stderr == f"git-theta: freed {size_text(size)} (1 files)\n"
    assert repo.objects() == before - {side_only}

    assert repo.theta("fsck", "--all").returncode == 0
    (repo.path / "model.pt").unlink()
    repo.git("checkout", "--", "model.pt")  # the index
    assert_same_object(load(repo), staged)
    repo.git("reset", "-q", "--hard")
    assert_same_object(load(repo), later)
    repo.git("checkout", "-q", first)
    assert_same_object(load(repo), state)
    repo.git("stash", "pop", "-q")  # on the commit it was made on
    assert_same_object(load(repo), stashed)


def test_gc_keeps_git_lfs_copy_an_lfs_pointer_names(
    shared: tuple[Repo, Path, LfsServer],
) -> None:
    a, _, _ = shared
    a.git("checkout", "-q", "-b", "side")
    commit(a, v1(), "side")
    a.git("push", "-q", "origin", "side")  # links the objects into git-lfs's directory
    oid = oids(a, "side:model.pt")["layers.0.weight"]
    lfs_copy = a.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    assert lfs_copy.is_file()
    a.git("checkout", "-q", "main")
    a.git("config", "filter.lfs.process", "git-lfs filter-process")  # git-lfs's filter
    a.git("config", "filter.lfs.required", "true")
    a.git("lfs", "track", "data.bin")
    (a.path / "data.bin").write_bytes(object_path(a, oid).read_bytes())  # the same bytes
    a.git("add", ".gitattributes", "data.bin")
    a.git("commit", "-q", "-m", "a plain LFS file")
    assert a.blob("HEAD:data.bin").startswith(b"version https://git-lfs")
    a.git("branch", "-q", "-D", "side")
    a.git("push", "-q", "origin", ":side")
    a.git("reflog", "expire", "--expire=now", "--all")
    a.theta("gc", "--prune=now")
    assert a.objects() == set()  # nothing of git-theta's is needed any more
    assert lfs_copy.is_file()  # but git-lfs's copy is: data.bin's pointer names it
    (a.path / "data.bin").unlink()
    a.git("checkout", "--", "data.bin")
    assert hashlib.sha256((a.path / "data.bin").read_bytes()).hexdigest() == oid


def test_gc_expiry_from_config_never_and_bad_dates(repo: Repo) -> None:
    state = v1()
    repo.git("checkout", "-q", "-b", "side")
    commit(repo, state, "side")
    repo.git("checkout", "-q", "main")
    repo.git("branch", "-q", "-D", "side")
    repo.git("reflog", "expire", "--expire=now", "--all")
    before = repo.objects()
    assert len(before) == N
    past = time.time() - 30 * 86400
    for oid in before:
        os.utime(object_path(repo, oid), (past, past))

    assert repo.theta("gc", "--prune=never").stdout == ""
    repo.git("config", "gc.pruneExpire", "never")
    assert repo.theta("gc").stdout == ""
    repo.git("config", "gc.pruneExpire", "40.days.ago")
    assert repo.theta("gc").stdout == ""
    bad = repo.theta("gc", "--prune=someday", check=False)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == (
        "git-theta: error: `someday` is not an expiry date git understands: try `now`, "
        "`2.weeks.ago`, `2026-01-31` or `never`\n"
    )
    assert repo.objects() == before
    repo.git("config", "--unset", "gc.pruneExpire")
    assert len(repo.theta("gc").stdout.splitlines()) == N  # older than two weeks
    assert repo.objects() == set()


def _orphan_side_branch(repo: Repo) -> set[str]:
    """Commit a checkpoint on branch `side` only; returns the oids it needs."""
    repo.git("checkout", "-q", "-b", "side")
    commit(repo, changed(v1(), 2, 200), "side")
    needed = set(oids(repo, "side:model.pt").values())
    repo.git("checkout", "-q", "main")
    return needed


def _forget_side(repo: Repo) -> None:
    repo.git("branch", "-q", "-D", "side")
    repo.git("reflog", "expire", "--expire=now", "--all")


def test_gc_keeps_what_a_tag_of_a_blob_keeps(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    needed = _orphan_side_branch(repo)
    repo.git("tag", "model-side", "side:model.pt")  # a tag of the manifest blob itself
    _forget_side(repo)
    assert repo.theta("gc", "--prune=now").stdout == ""
    assert needed <= repo.objects()
    repo.git("tag", "-d", "model-side")
    assert len(repo.theta("gc", "--prune=now").stdout.splitlines()) == 1  # layers.2 only


def test_gc_keeps_what_the_index_of_a_vanished_worktree_keeps(repo: Repo, tmp_path: Path) -> None:
    state = v1()
    commit(repo, state, "v1")
    repo.git("worktree", "add", "-q", str(tmp_path / "wt"))
    other = Repo(tmp_path / "wt")
    save(other, changed(state, 3, 300))
    other.git("add", "model.pt")
    staged = oids(other, ":model.pt")["layers.3.weight"]
    subprocess.run(["rm", "-rf", str(other.path)], check=True)  # e.g. an unmounted drive
    assert repo.theta("gc", "--prune=now").stdout == ""
    assert staged in repo.objects()


def test_gc_keeps_the_objects_a_large_manifest_names(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    needed = _orphan_side_branch(repo)
    manifest = json.loads(repo.blob("side:model.pt"))
    manifest["padding"] = "x" * (65 << 20)  # larger than the scanner's 64 MiB limit
    (repo.path / "big.json").write_text(json.dumps(manifest))
    repo.git("add", "big.json")
    repo.git("commit", "-q", "-m", "a large manifest-like file")
    _forget_side(repo)
    assert repo.theta("gc", "--prune=now").stdout == ""
    assert needed <= repo.objects()


def test_gc_refuses_a_store_outside_the_repository(repo: Repo, tmp_path: Path) -> None:
    repo.git("config", "lfs.storage", str(tmp_path / "shared-lfs"))
    commit(repo, v1(), "v1")
    proc = repo.theta("gc", "--prune=now", check=False)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        f"git-theta: error: objects are kept in {tmp_path / 'shared-lfs'} (lfs.storage), "
        "outside this repository, where other repositories may keep theirs: gc cannot see "
        "what those need, so it deletes nothing there\n"
    )


def test_fsck_reports_a_manifest_it_cannot_read(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    damaged = b'{"git_theta": 1, "tensors": 5}\n'
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=repo.path,
            input=damaged,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    repo.git("update-index", "--cacheinfo", f"100644,{blob},model.pt")
    proc = repo.theta("fsck", check=False)
    assert proc.returncode == 1
    assert proc.stdout.startswith(
        f"model.pt in the index of {repo.path}: not a readable manifest: "
    )
    assert len(proc.stdout.splitlines()) == 1


def test_gc_removes_temporary_files_of_killed_processes(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    tmp = repo.path / ".git" / "lfs" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    old, new, other = tmp / "theta-in-killed", tmp / "theta-running", tmp / "not-ours"
    for path in (old, new, other):
        path.write_bytes(b"12345")
    past = time.time() - 30 * 86400
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    proc = repo.theta("gc")
    assert proc.stdout == "deleted temporary file .git/lfs/tmp/theta-in-killed (5 B)\n"
    assert not old.exists() and new.exists() and other.exists()
    assert repo.theta("gc", "--prune=now").stdout == (
        "deleted temporary file .git/lfs/tmp/theta-running (5 B)\n"
    )
    assert other.exists()
    assert repo.theta("fsck").returncode == 0


# ----------------------------------------------------------------------------- git lfs prune


def test_git_lfs_prune_without_a_remote_loses_nothing(repo: Repo) -> None:
    states = [v1()]
    states.append(changed(states[0], 1, 100))
    states.append(changed(states[1], 2, 200))
    commits = [commit(repo, s, f"v{i}") for i, s in enumerate(states, 1)]
    before = repo.objects()
    repo.git("lfs", "prune")
    assert repo.objects() == before
    for rev, state in zip(commits, states, strict=True):
        repo.git("checkout", "-q", rev)
        assert_same_object(load(repo), state)
    assert repo.theta("fsck", "--all").stderr == all_sound(3, 6, 6)
    repo.git("checkout", "-q", "main")
    save(repo, states[2])  # the same checkpoint added again stores nothing new
    repo.git("add", "model.pt")
    assert repo.objects() == before


def test_git_lfs_prune_after_push_loses_nothing(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, _ = shared
    states = [v1()]
    states.append(changed(states[0], 1, 100))
    states.append(changed(states[1], 2, 200))
    commits = [commit(a, states[0], "v1")]
    a.git("push", "-q", "origin", "main")
    commits += [commit(a, s, f"v{i}") for i, s in enumerate(states[1:], 2)]
    a.git("lfs", "prune")  # two commits not pushed yet
    a.git("push", "-q", "origin", "main")  # still has every object to upload
    a.git("lfs", "prune")
    for rev, state in zip(commits, states, strict=True):
        a.git("checkout", "-q", rev)
        assert_same_object(load(a), state)

    # a clone downloads into git-lfs's directory; prune there, then every commit still
    # checks out (what prune took is fetched back, or was kept)
    subprocess.run(["git", "clone", "-q", str(bare), str(tmp_path / "b")], check=True)
    b = Repo(tmp_path / "b")
    for rev, state in zip(commits, states, strict=True):
        b.git("checkout", "-q", rev)
        assert_same_object(load(b), state)
    b.git("checkout", "-q", "main")
    b.git("lfs", "prune")
    for rev, state in zip(commits, states, strict=True):
        b.git("checkout", "-q", rev)
        assert_same_object(load(b), state)
    assert b.theta("fsck", "--all").returncode == 0


@pytest.mark.parametrize("command", ["fsck", "gc"])
def test_help(repo: Repo, command: str) -> None:
    proc = repo.theta(command, "--help")
    assert proc.stdout.startswith(f"Usage: git theta {command} [OPTIONS]")
    assert "--prune" in proc.stdout if command == "gc" else "--fetch" in proc.stdout


# ----------------------------------------------------------------------------- checkout, install


def test_theta_checkout_refuses_where_the_filter_is_not_configured(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    repo.theta("uninstall", "--local")
    (repo.path / "model.pt").unlink()
    staged = repo.git("ls-files", "-s").stdout
    proc = repo.theta("checkout", check=False)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "git-theta: error: git-theta's filter is not configured for this repository, so git "
        "would store rebuilt checkpoints whole: run `git theta install` first (`--local` for "
        "this repository only), then `git theta checkout`\n"
    )
    assert not (repo.path / "model.pt").exists()
    assert repo.git("ls-files", "-s").stdout == staged
    repo.theta("install", "--local")
    assert repo.theta("checkout").stderr == "git-theta: rebuilt model.pt\n"
    assert_same_object(load(repo), v1())
    assert repo.status() == ""


def test_theta_checkout_respects_sparse_checkout_and_pathspecs(repo: Repo) -> None:
    for directory in ("a", "b"):
        repo.theta("track", f"{directory}/model.pt")
        (repo.path / directory).mkdir()
        torch.save(v1(), repo.path / directory / "model.pt")
    repo.git("add", ".")
    repo.git("commit", "-q", "-m", "two checkpoints")
    repo.git("sparse-checkout", "set", "a")
    assert not (repo.path / "b").exists()
    (repo.path / "a" / "model.pt").unlink()
    assert repo.theta("checkout").stderr == "git-theta: rebuilt a/model.pt\n"
    assert not (repo.path / "b").exists()  # outside the cone: not written
    assert_same_object(torch.load(repo.path / "a" / "model.pt", weights_only=True), v1())

    repo.git("sparse-checkout", "disable")
    for directory in ("a", "b"):
        (repo.path / directory / "model.pt").unlink()
    assert repo.theta("checkout", "b/model.pt").stderr == "git-theta: rebuilt b/model.pt\n"
    assert not (repo.path / "a" / "model.pt").exists()
    sub = subprocess.run(
        ["git", "theta", "checkout", "model.pt"],
        cwd=repo.path / "a",  # a pathspec is read relative to where it is given
        capture_output=True,
        text=True,
    )
    assert (sub.returncode, sub.stderr) == (0, "git-theta: rebuilt a/model.pt\n")
    assert repo.status() == ""


def test_install_global_touches_no_repository_hooks(repo: Repo, tmp_path: Path) -> None:
    plain = Repo.init(tmp_path / "plain")
    hook = plain.path / ".git" / "hooks" / "pre-push"
    plain.theta("install", "--global")
    assert not hook.exists()
    installed = repo.path / ".git" / "hooks" / "pre-push"
    assert installed.is_file()  # from the fixture's `install --local`
    text = installed.read_text()
    repo.theta("uninstall", "--global")
    assert installed.read_text() == text
    plain.theta("install", "--global")
    plain.theta("track", "model.pt")
    save(plain, v1())
    plain.git("add", "model.pt")  # the filter's first run here installs the hook
    assert hook.is_file()


def test_checkout_works_with_a_read_only_object_store(repo: Repo) -> None:
    state = v1()
    first = commit(repo, state, "v1")
    later = changed(state, 1, 100)
    commit(repo, later, "v2")
    lfs = repo.path / ".git" / "lfs"
    with read_only(lfs):
        repo.git("checkout", "-q", first)
        assert_same_object(load(repo), state)
        (repo.path / "model.pt").unlink()
        assert repo.theta("checkout").stderr == "git-theta: rebuilt model.pt\n"
        assert_same_object(load(repo), state)
        repo.git("checkout", "-q", "main")
        assert_same_object(load(repo), later)
        assert repo.theta("fsck", "--all").returncode == 0


# ----------------------------------------------------------------------------- a killed add


def _filter_processes(parent: int) -> list[int]:
    """PIDs of git-theta filter processes below process ``parent``."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if "filter-process" in commands.get(child, ""):
                found.append(child)
    return found


def _limits() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_during_add_of_a_large_checkpoint_loses_nothing(repo: Repo) -> None:
    commit(repo, v1(), "v1")
    staged = repo.git("ls-files", "-s").stdout
    gen = torch.Generator().manual_seed(7)
    big = {f"block.{i}": torch.randn(2_500_000, generator=gen) for i in range(30)}  # 300 MB
    save(repo, big)
    model = repo.path / "model.pt"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    store = repo.path / OBJECTS
    before = repo.objects()
    tmp = repo.path / ".git" / "lfs" / "tmp"

    env = {**os.environ, "GIT_THETA_THREADS": "1"}
    add = subprocess.Popen(
        ["git", "add", "model.pt"],
        cwd=repo.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_limits,
    )
    killed = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and add.poll() is None:
            if len(repo.objects() - before) >= 3:  # in the middle of storing the tensors
                for pid in _filter_processes(add.pid):
                    os.kill(pid, 9)
                    killed = True
                if killed:
                    break
            time.sleep(0.005)
        _, err = add.communicate(timeout=120)
    finally:
        if add.poll() is None:
            add.kill()
            add.wait()
    assert killed, "the add finished before the filter could be killed"
    assert add.returncode != 0 and b"model.pt" in err

    assert repo.git("ls-files", "-s").stdout == staged  # the index is as before
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest  # and the file
    for path in store.rglob("*"):  # every object visible is whole
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    leftovers = sorted(p.name for p in tmp.iterdir() if p.name.startswith("theta-"))
    assert leftovers  # the spooled input at least: what gc is for

    repo.git("add", "model.pt")
    assert repo.theta("fsck").returncode == 0
    sizes = {name: (tmp / name).stat().st_size for name in leftovers}
    gc = repo.theta("gc", "--prune=now")
    assert gc.stdout == "".join(
        f"deleted temporary file .git/lfs/tmp/{name} ({size_text(size)})\n"
        for name, size in sizes.items()
    )
    assert [p for p in tmp.iterdir() if p.name.startswith("theta-")] == []
    model.unlink()
    repo.git("checkout", "--", "model.pt")
    assert_same_object(load(repo), big)
