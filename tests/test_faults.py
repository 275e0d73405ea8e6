"""Fault injection: commands killed at random points, an LFS server that is down or holds a
missing or corrupt object. After each fault the repository must be consistent (`git theta
fsck --all` exits 0), the next run of the command must succeed, and everything committed
must check out bit-exact. Each case, when it passes, adds its row to the README's
"Reliability" table (scripts/fault-table writes it from these results, never by hand).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from tests.helpers import Repo, seeded_state_dict
from tests.lfs_server import LfsServer
from tests.test_remote import clone

KILLS = 13  # kill points per command (4 commands: 52 over a run)


def record(fault: str, command: str, happened: str) -> None:
    """Adds a row to the fault table (when scripts/fault-table asks for one): called only
    after the case has checked that nothing was lost."""
    log = os.environ.get("THETA_FAULT_TABLE_LOG")
    if log:
        row = json.dumps({"fault": fault, "command": command, "happened": happened}) + "\n"
        with open(log, "a") as f:
            f.write(row)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(repo: Repo, seed: int) -> str:
    torch.save(seeded_state_dict(n=16, size=384, seed=seed), repo.path / "model.pt")
    return _sha(repo.path / "model.pt")


def _killed(repo: Repo, args: list[str], delay: float) -> int:
    """Runs ``args`` in the repository and SIGKILLs it (and its filter and hooks) after
    ``delay`` seconds unless it ended first; returns its exit code."""
    proc = subprocess.Popen(
        args,
        cwd=repo.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def _after_kill(repo: Repo) -> None:
    """What a user does after a killed git command, as git says: remove its lock."""
    lock = repo.path / ".git" / "index.lock"
    if lock.exists():
        lock.unlink()


def _fsck(repo: Repo) -> None:
    proc = repo.theta("fsck", "--all", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _all_check_out(repo: Repo, history: dict[str, str]) -> None:
    """Every commit of ``history`` (commit -> sha256 of its model.pt) checks out bit-exact."""
    for sha, expected in history.items():
        repo.git("checkout", "-q", sha, "--", "model.pt")
        assert _sha(repo.path / "model.pt") == expected, sha


def _delays(seed: int, longest: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.01, longest) for _ in range(KILLS)]


@pytest.mark.timeout(600)
def test_git_add_killed_at_random_points(repo: Repo) -> None:
    committed = {}
    for i, delay in enumerate(_delays(1, 1.2)):
        expected = _save(repo, seed=100 + i)
        _killed(repo, ["git", "add", "model.pt"], delay)
        _after_kill(repo)
        _fsck(repo)
        repo.git("add", "model.pt")  # the next run succeeds
        repo.git("commit", "-q", "-m", f"v{i}")
        committed[repo.git("rev-parse", "HEAD").stdout.strip()] = expected
    _all_check_out(repo, committed)
    record(
        f"SIGKILL at {KILLS} random points",
        "git add",
        "fsck --all clean; the next add stages the file; every commit checks out bit-exact",
    )


@pytest.mark.timeout(600)
def test_git_checkout_killed_at_random_points(repo: Repo) -> None:
    first = _save(repo, seed=1)
    repo.commit_file("model.pt", "v1")
    second = _save(repo, seed=2)
    repo.commit_file("model.pt", "v2")
    for i, delay in enumerate(_delays(2, 1.0)):
        rev, expected = ("HEAD~1", first) if i % 2 == 0 else ("HEAD", second)
        _killed(repo, ["git", "checkout", rev, "--", "model.pt"], delay)
        _after_kill(repo)
        _fsck(repo)
        repo.git("checkout", rev, "--", "model.pt")
        assert _sha(repo.path / "model.pt") == expected
    record(
        f"SIGKILL at {KILLS} random points",
        "git checkout",
        "fsck --all clean; a cut-short work-tree file is rewritten by the next checkout",
    )


@pytest.mark.timeout(600)
def test_git_theta_gc_killed_at_random_points(repo: Repo) -> None:
    kept = {}
    for i, delay in enumerate(_delays(3, 0.8)):
        for j in range(2):  # each round leaves objects only an uncommitted add needed
            _save(repo, seed=1000 * i + j)
            repo.git("add", "model.pt")
        expected = _save(repo, seed=1000 * i + 7)
        repo.commit_file("model.pt", f"v{i}")
        kept[repo.git("rev-parse", "HEAD").stdout.strip()] = expected
        _killed(repo, ["git", "theta", "gc", "--prune=now"], delay)
        _fsck(repo)
    repo.theta("gc", "--prune=now")
    _all_check_out(repo, kept)
    record(
        f"SIGKILL at {KILLS} random points",
        "git theta gc",
        "fsck --all clean; the next gc completes; every commit checks out bit-exact",
    )


@pytest.mark.timeout(600)
def test_git_push_killed_at_random_points(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, _ = shared
    history = {}
    for i, delay in enumerate(_delays(4, 1.5)):
        expected = _save(a, seed=200 + i)
        a.commit_file("model.pt", f"v{i}")
        history[a.git("rev-parse", "HEAD").stdout.strip()] = expected
        _killed(a, ["git", "push", "-q", "origin", "main"], delay)
        _fsck(a)
        a.git("push", "-q", "origin", "main")  # the next push completes
    b, _ = clone(bare, tmp_path / "b")
    _all_check_out(b, history)
    record(
        f"SIGKILL at {KILLS} random points",
        "git push",
        "fsck --all clean; the next push completes; a clone checks out every commit bit-exact",
    )


def _theta_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("git-theta: error:")]


@pytest.mark.timeout(300)
def test_an_lfs_server_that_is_down(shared: tuple[Repo, Path, LfsServer]) -> None:
    a, _, server = shared
    expected = _save(a, seed=5)
    a.commit_file("model.pt", "v1")
    server.stop()
    proc = a.git("push", "origin", "main", check=False)
    assert proc.returncode != 0
    lines = _theta_lines(proc.stderr)
    assert len(lines) == 1 and "could not upload objects for tensors" in lines[0], proc.stderr
    _fsck(a)
    server.start()
    a.git("push", "-q", "origin", "main")
    assert _sha(a.path / "model.pt") == expected
    record(
        "LFS server down",
        "git push",
        "one line naming the remote and tensors; the push after it is up completes",
    )


def _pushed(shared: tuple[Repo, Path, LfsServer]) -> tuple[Repo, Path, LfsServer, str]:
    a, bare, server = shared
    expected = _save(a, seed=6)
    a.commit_file("model.pt", "v1")
    a.git("push", "-q", "origin", "main")
    return a, bare, server, expected


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_an_object_missing_or_corrupt_on_the_server(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path, damage: str
) -> None:
    a, bare, server, expected = _pushed(shared)
    stored = sorted(p for p in server.storage.rglob("*") if p.is_file())
    victim = stored[0]
    original = victim.read_bytes()
    if damage == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    b, proc = clone(bare, tmp_path / "b", check=False)
    assert proc.returncode != 0  # git: "Clone succeeded, but checkout failed"
    lines = _theta_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "could not download objects for tensors" in lines[0]
    assert not b.objects() & {victim.name}  # nothing bad stored
    _fsck(a)  # the pushing repository still has everything
    victim.write_bytes(original)
    b.theta("checkout")
    assert _sha(b.path / "model.pt") == expected
    record(
        f"an object {damage} on the LFS server",
        "git clone",
        "one line naming the tensor; nothing bad stored; `git theta checkout` after a repair works",
    )


class _Broken(http.server.BaseHTTPRequestHandler):
    """An LFS endpoint that fails every request the way ``server.mode`` says."""

    def _fail(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "stalls":  # until the test stops the server
            self.server.stopping.wait(60)  # type: ignore[attr-defined]
            return
        if mode == "closes the connection":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps({"message": "internal error"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/vnd.git-lfs+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _fail

    def log_message(self, *args: object) -> None:
        pass


class _BrokenServer(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close waits for every request's thread

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Broken)
        self.mode = mode
        self.stopping = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/test/repo"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def _point_at(repo: Repo, url: str) -> None:
    for key, value in (
        ("lfs.url", url),
        (f"lfs.{url}.locksverify", "false"),
        ("lfs.activitytimeout", "2"),
        ("lfs.transfer.maxretries", "1"),
        ("lfs.transfer.maxretrydelay", "1"),
    ):
        repo.git("config", key, value)


BROKEN = ["answers 500", "closes the connection", "stalls"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", BROKEN)
def test_an_lfs_server_that_fails_a_push(shared: tuple[Repo, Path, LfsServer], mode: str) -> None:
    a, _, server = shared
    expected = _save(a, seed=8)
    a.commit_file("model.pt", "v1")
    broken = _BrokenServer(mode)
    _point_at(a, broken.url)
    try:
        proc = a.git("push", "origin", "main", check=False)
    finally:
        broken.stop()
    assert proc.returncode != 0
    lines = _theta_lines(proc.stderr)
    assert len(lines) == 1 and "could not upload objects for tensors" in lines[0], proc.stderr
    _fsck(a)
    _point_at(a, server.url)
    a.git("push", "-q", "origin", "main")
    assert _sha(a.path / "model.pt") == expected
    record(
        f"LFS server {mode}",
        "git push",
        "one line naming the remote and tensors; the push to a working server completes",
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", BROKEN)
def test_an_lfs_server_that_fails_a_checkout(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path, mode: str
) -> None:
    a, bare, server, expected = _pushed(shared)
    b, _ = clone(bare, tmp_path / "b")
    for found in (b.path / ".git" / "lfs").rglob("*"):
        if found.is_file():
            found.unlink()
    (b.path / "model.pt").unlink()
    broken = _BrokenServer(mode)
    _point_at(b, broken.url)
    try:
        proc = b.theta("checkout", check=False)
    finally:
        broken.stop()
    assert proc.returncode != 0
    lines = _theta_lines(proc.stderr)
    assert len(lines) == 1 and "could not download objects for tensors" in lines[0], proc.stderr
    assert not (b.path / "model.pt").exists()
    _point_at(b, server.url)
    b.theta("checkout")
    assert _sha(b.path / "model.pt") == expected
    record(
        f"LFS server {mode}",
        "git theta checkout",
        "one line naming the tensors; nothing written; the checkout from a working server works",
    )
