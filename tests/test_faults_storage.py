"""Fault injection on the disk: a full disk (a small tmpfs holding the repository) and a
read-only object store (a read-only bind mount of ``.git/lfs``, which root cannot write
either). Each command fails with one line that says what is wrong, the index and the store
stay as they were, and after the fault is gone the command succeeds and every commit checks
out bit-exact. Rows go to the README's Reliability table as in tests/test_faults.py.

Mounting needs root (or CAP_SYS_ADMIN), which the project's machines and CI have.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import Repo, seeded_state_dict
from tests.lfs_server import LfsServer
from tests.test_faults import (
    _all_check_out,
    _fsck,
    _one_error,
    _sha,
    _theta_lines,
    pushed,
    record,
)
from tests.test_remote import clone_without_objects

DISK = 48 << 20  # the tmpfs: room for the repository and a few versions of its checkpoint


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"mount {' '.join(args)} failed (these tests need root): {proc.stderr}")


@contextlib.contextmanager
def _mounted(target: Path, *args: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    _mount(*args, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs."""
    with _mounted(tmp_path / "disk", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs") as target:
        yield target


def _save(repo: Repo, seed: int, n: int = 8) -> str:
    """A checkpoint of ``n`` 256x256 float32 tensors (256 KiB each); its sha256."""
    torch.save(seeded_state_dict(n=n, size=256, seed=seed), repo.path / "model.pt")
    return _sha(repo.path / "model.pt")


@contextlib.contextmanager
def _full(disk: Path, leave: int = 64 << 10) -> Iterator[None]:
    """Fills ``disk`` but for ``leave`` bytes, then frees it again."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(free - leave, 1))
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


def _unstaged_nothing(repo: Repo) -> None:
    """The index still holds what HEAD holds."""
    assert repo.git("diff", "--cached", "--name-only").stdout == ""


def _no_temporaries(repo: Repo) -> None:
    tmp = repo.path / ".git" / "lfs" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), sorted(tmp.iterdir())


@pytest.mark.timeout(300)
def test_git_add_on_a_full_disk(disk: Path) -> None:
    r = Repo.tracking(disk / "repo")
    history = {}
    first = _save(r, seed=1)
    history[r.commit_file("model.pt", "v1")] = first
    second = _save(r, seed=2)  # every tensor new: 2 MiB of objects to write
    with _full(disk):
        proc = r.git("add", "model.pt", check=False)
        line = _one_error(proc)
        assert re.fullmatch(
            f"git-theta: error: model.pt: no space left on the device "
            rf"\({re.escape(str(r.path))}/\.git/lfs(/tmp)?\): free some \(`git theta gc` "
            r"deletes objects nothing refers to\) and run the command again",
            line,
        ), line
        _unstaged_nothing(r)
        _no_temporaries(r)
        _fsck(r)
    history[r.commit_file("model.pt", "v2")] = second  # with space again, the add works
    _all_check_out(r, history)
    record(
        "disk full (a tmpfs holding the repository)",
        "git add",
        "one line: no space left on the device; the index and the store as they were; "
        "the add after space is freed works; every commit checks out bit-exact",
    )


@pytest.mark.timeout(300)
def test_git_checkout_on_a_full_disk(disk: Path) -> None:
    r = Repo.tracking(disk / "repo")
    big = _save(r, seed=3)
    history = {r.commit_file("model.pt", "big"): big}
    small = _save(r, seed=4, n=1)
    history[r.commit_file("model.pt", "small")] = small
    with _full(disk):  # the big version does not fit
        proc = r.git("checkout", "HEAD~1", "--", "model.pt", check=False)
        assert proc.returncode != 0
        assert "error: unable to write file model.pt" in proc.stderr, proc.stderr
        assert not _theta_lines(proc.stderr), proc.stderr  # git-theta's part went through
        _fsck(r)
    r.git("checkout", "HEAD~1", "--", "model.pt")  # with space again
    assert _sha(r.path / "model.pt") == big
    _all_check_out(r, history)
    record(
        "disk full (a tmpfs holding the repository)",
        "git checkout",
        "git says it cannot write the file; fsck --all clean; the checkout after space is "
        "freed writes it bit-exact",
    )


@pytest.mark.timeout(300)
def test_a_download_onto_a_full_disk(shared: tuple[Repo, Path, LfsServer], disk: Path) -> None:
    _, bare, _, expected = pushed(shared)
    b = clone_without_objects(bare, disk / "b")
    with _full(disk):
        proc = b.theta("checkout", check=False)
        line = _one_error(proc)
        assert "from remote `origin`: no space left on the device holding the repository" in line
        _no_temporaries(b)
        assert not b.objects()  # nothing half-downloaded kept
        assert not (b.path / "model.pt").exists()
    b.theta("checkout")
    assert _sha(b.path / "model.pt") == expected
    record(
        "disk full (a tmpfs holding the repository)",
        "git theta checkout",
        "one line: no space left on the device; nothing half-downloaded kept; the checkout "
        "after space is freed downloads and writes it bit-exact",
    )


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for everyone, root included: a read-only bind mount over it."""
    with _mounted(path, "--bind", str(path)):
        _mount("-o", "remount,bind,ro", str(path))
        yield


def _two_versions(r: Repo) -> dict[str, str]:
    history = {}
    for seed in (6, 7):
        expected = _save(r, seed=seed)
        history[r.commit_file("model.pt", f"v{seed}")] = expected
    return history


@pytest.mark.timeout(300)
def test_git_add_with_a_read_only_store(tmp_path: Path) -> None:
    r = Repo.tracking(tmp_path / "repo")
    history = _two_versions(r)
    before = r.objects()
    new = _save(r, seed=8)
    with _read_only(r.path / ".git" / "lfs"):
        proc = r.git("add", "model.pt", check=False)
        line = _one_error(proc)
        assert line == (
            f"git-theta: error: model.pt: read-only file system ({r.path}/.git/lfs): "
            "make it writable and run the command again"
        )
        _unstaged_nothing(r)
        _fsck(r)
    assert r.objects() == before
    history[r.commit_file("model.pt", "v8")] = new  # writable again: the add works
    _all_check_out(r, history)
    record(
        "a read-only object store (read-only mount of `.git/lfs`)",
        "git add",
        "one line: read-only file system, naming the directory; the index and the store as "
        "they were; the add once it is writable works",
    )


@pytest.mark.timeout(300)
def test_git_checkout_and_fsck_with_a_read_only_store(tmp_path: Path) -> None:
    r = Repo.tracking(tmp_path / "repo")
    history = _two_versions(r)
    with _read_only(r.path / ".git" / "lfs"):
        _fsck(r)  # reading needs no writes
        (r.path / "model.pt").unlink()
        _all_check_out(r, history)
        assert r.git("status", "--porcelain").stdout == ""
    record(
        "a read-only object store (read-only mount of `.git/lfs`)",
        "git checkout",
        "works: every commit checks out bit-exact and `git theta fsck --all` is clean "
        "(reading writes nothing)",
    )


@pytest.mark.timeout(300)
def test_git_theta_gc_with_a_read_only_store(tmp_path: Path) -> None:
    r = Repo.tracking(tmp_path / "repo")
    history = _two_versions(r)
    _save(r, seed=9)
    r.git("add", "model.pt")  # objects that only this staged version needs
    r.git("reset", "-q", "--hard")  # ...which nothing refers to now
    before = r.objects()
    with _read_only(r.path / ".git" / "lfs"):
        proc = r.theta("gc", "--prune=now", check=False)
        line = _one_error(proc)
        assert line.startswith("git-theta: error: could not delete object "), line
        assert "read-only file system" in line, line
    assert r.objects() == before  # nothing deleted
    _fsck(r)
    proc = r.theta("gc", "--prune=now")
    assert r.objects() < before
    _all_check_out(r, history)
    record(
        "a read-only object store (read-only mount of `.git/lfs`)",
        "git theta gc",
        "one line: read-only file system; nothing deleted; the gc once it is writable frees "
        "the unreferenced objects; every commit checks out bit-exact",
    )


@pytest.mark.timeout(300)
def test_a_download_into_a_read_only_store(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    _, bare, _, expected = pushed(shared)
    b = clone_without_objects(bare, tmp_path / "b")
    with _read_only(b.path / ".git" / "lfs"):
        proc = b.theta("checkout", check=False)
        line = _one_error(proc)
        assert line.endswith(
            "from remote `origin`: the repository's LFS directory is on a read-only file "
            "system: make it writable, then run `git theta checkout`"
        )
        assert not (b.path / "model.pt").exists()
    b.theta("checkout")
    assert _sha(b.path / "model.pt") == expected
    record(
        "a read-only object store (read-only mount of `.git/lfs`)",
        "git theta checkout",
        "one line: the LFS directory is read-only; nothing written; the checkout once it is "
        "writable downloads and writes it bit-exact",
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["one bit flipped", "cut short"])
def test_an_object_decayed_in_the_local_store(
    shared: tuple[Repo, Path, LfsServer], damage: str
) -> None:
    a, _, _, first = pushed(shared)
    history = {a.git("rev-parse", "HEAD").stdout.strip(): first}
    _save(a, seed=11)
    history[a.commit_file("model.pt", "v2")] = _sha(a.path / "model.pt")
    a.git("push", "-q", "origin", "main")
    victim = sorted(a.path.glob(".git/lfs/theta/objects/*/*/*"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "one bit flipped":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) // 2 :]
    victim.write_bytes(bytes(data))
    failed = 0
    for sha, expected in history.items():  # whichever version needs it fails; none is wrong
        proc = a.git("checkout", sha, "--", "model.pt", check=False)
        if proc.returncode == 0:
            assert _sha(a.path / "model.pt") == expected
            continue
        failed += 1
        assert f"object {victim.name[:12]}…" in _one_error(proc), proc.stderr
        model = a.path / "model.pt"
        assert not model.exists() or _sha(model) in history.values()  # never a wrong file
    assert failed
    proc = a.theta("fsck", "--all", check=False)
    assert proc.returncode == 1 and victim.name[:12] in proc.stdout, proc.stdout
    a.theta("fsck", "--all", "--fetch")  # a good copy from the LFS server
    _fsck(a)
    a.git("checkout", "-q", "main")
    _all_check_out(a, history)
    record(
        f"an object in the local store {damage}",
        "git checkout",
        "one line naming the object; no wrong file written; `git theta fsck --all` names it "
        "and `fsck --fetch` repairs it from the server; every commit checks out bit-exact",
    )
