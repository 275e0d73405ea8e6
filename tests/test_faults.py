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
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.helpers import Repo, seeded_state_dict
from tests.lfs_server import LfsServer
from tests.test_remote import clone, clone_without_objects

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
    return _signalled(repo, args, delay, signal.SIGKILL)[0]


def _signalled(repo: Repo, args: list[str], delay: float, sig: signal.Signals) -> tuple[int, str]:
    """Runs ``args`` in the repository and sends ``sig`` to its process group (as a
    terminal sends Ctrl-C to the foreground job) after ``delay`` seconds unless it ended
    first; returns its exit code and what it wrote on stderr."""
    proc = subprocess.Popen(
        args,
        cwd=repo.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(errors="replace")


def _after_kill(repo: Repo) -> None:
    """What a user does after a killed git command: remove the lock git says to remove, and
    the temporary files git gives a merge driver (``.merge_file_*``), which git deletes only
    when the merge ends."""
    lock = repo.path / ".git" / "index.lock"
    if lock.exists():
        lock.unlink()
    for left in repo.path.glob(".merge_file_*"):
        left.unlink()


def _fsck(repo: Repo) -> None:
    proc = repo.theta("fsck", "--all", check=False)
    state = repo.git("status", "--porcelain", check=False).stdout
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nstatus:\n{state}"


def _all_check_out(repo: Repo, history: dict[str, str]) -> None:
    """Every commit of ``history`` (commit -> sha256 of its model.pt) checks out bit-exact."""
    for sha, expected in history.items():
        repo.git("checkout", "-q", sha, "--", "model.pt")
        assert _sha(repo.path / "model.pt") == expected, sha


def _delays(seed: int, longest: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.01, longest) for _ in range(KILLS)]


# how a command is stopped: the fault's name in the table, and what its row adds
STOPS = {
    signal.SIGKILL: (f"SIGKILL at {KILLS} random points", ""),
    signal.SIGINT: (
        f"Ctrl-C (SIGINT to the process group) at {KILLS} random points",
        "no traceback from git-theta; ",
    ),
}


def _no_traceback(stderr: str) -> None:
    """A stopped command ends in git's and git-theta's own words, never in a traceback
    through git-theta's code. (A Ctrl-C that lands while the interpreter itself starts,
    before any of git-theta's code runs, is Python's: "Fatal Python error:
    init_import_site".)"""
    assert not re.search(r'File "[^"]*/git_theta/', stderr), stderr


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", list(STOPS), ids=["sigkill", "ctrl-c"])
def test_git_add_stopped_at_random_points(repo: Repo, sig: signal.Signals) -> None:
    committed = {}
    for i, delay in enumerate(_delays(int(sig), 1.2)):
        expected = _save(repo, seed=100 * int(sig) + i)
        _, stderr = _signalled(repo, ["git", "add", "model.pt"], delay, sig)
        _no_traceback(stderr)
        _after_kill(repo)
        _fsck(repo)
        committed[repo.commit_file("model.pt", f"v{i}")] = expected  # the next add works
    _all_check_out(repo, committed)
    fault, adds = STOPS[sig]
    record(
        fault,
        "git add",
        f"{adds}fsck --all clean; the next add stages the file; every commit checks out bit-exact",
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", list(STOPS), ids=["sigkill", "ctrl-c"])
def test_git_checkout_stopped_at_random_points(repo: Repo, sig: signal.Signals) -> None:
    history = {}
    for seed in (1, 2):
        expected = _save(repo, seed=seed)
        history[repo.commit_file("model.pt", f"v{seed}")] = expected
    revs = list(history)
    for i, delay in enumerate(_delays(int(sig) + 1, 1.0)):
        rev = revs[i % 2]
        args = ["git", "checkout", rev, "--", "model.pt"]
        _, stderr = _signalled(repo, args, delay, sig)
        _no_traceback(stderr)
        _after_kill(repo)
        _fsck(repo)
        repo.git("checkout", rev, "--", "model.pt")
        assert _sha(repo.path / "model.pt") == history[rev]
    fault, adds = STOPS[sig]
    record(
        fault,
        "git checkout",
        f"{adds}fsck --all clean; the next checkout rewrites a cut-short work-tree file bit-exact",
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


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line of git-theta's: that line."""
    assert proc.returncode != 0, proc.stderr
    lines = _theta_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.timeout(300)
def test_an_lfs_server_that_is_down(shared: tuple[Repo, Path, LfsServer]) -> None:
    a, _, server = shared
    expected = _save(a, seed=5)
    a.commit_file("model.pt", "v1")
    server.stop()
    proc = a.git("push", "origin", "main", check=False)
    assert "could not upload objects for tensors" in _one_error(proc), proc.stderr
    _fsck(a)
    server.start()
    a.git("push", "-q", "origin", "main")
    assert _sha(a.path / "model.pt") == expected
    record(
        "LFS server down",
        "git push",
        "one line naming the remote and tensors; the push after it is up completes",
    )


@pytest.mark.timeout(300)
def test_an_lfs_server_that_is_down_during_a_clone(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, server, expected = pushed(shared)
    server.stop()
    b, proc = clone(bare, tmp_path / "b", check=False)
    # git: "Clone succeeded, but checkout failed"
    assert "could not download objects for tensors" in _one_error(proc), proc.stderr
    assert not (b.path / "model.pt").exists() and not b.objects()
    server.start()
    b.theta("checkout")  # as the message says
    assert _sha(b.path / "model.pt") == expected
    assert b.git("status", "--porcelain").stdout == ""
    _fsck(b)
    record(
        "LFS server down",
        "git clone",
        "git's commits cloned, one line naming the tensors, no file written; "
        "`git theta checkout` once it is up writes it bit-exact",
    )


def pushed(shared: tuple[Repo, Path, LfsServer]) -> tuple[Repo, Path, LfsServer, str]:
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
    a, bare, server, expected = pushed(shared)
    stored = sorted(p for p in server.storage.rglob("*") if p.is_file())
    victim = stored[0]
    original = victim.read_bytes()
    if damage == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    b, proc = clone(bare, tmp_path / "b", check=False)
    # git: "Clone succeeded, but checkout failed"
    assert "could not download objects for tensors" in _one_error(proc), proc.stderr
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


CUTS = "cuts each transfer off halfway"


class _Broken(http.server.BaseHTTPRequestHandler):
    """An LFS endpoint that fails every request the way ``server.mode`` says; in mode
    ``CUTS`` it answers the batch API, then closes each object's connection halfway
    through its bytes (a download sends half of them, an upload is read half)."""

    def _cut(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_POST(self) -> None:
        if self.server.mode != CUTS or not self.path.endswith("/objects/batch"):  # type: ignore[attr-defined]
            return self._fail()
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        base = f"http://127.0.0.1:{self.server.server_address[1]}/data"
        objects = []
        for obj in request["objects"]:
            self.server.sizes[obj["oid"]] = obj["size"]  # type: ignore[attr-defined]
            action = {"href": f"{base}/{obj['oid']}", "expires_in": 3600}
            objects.append(
                {**obj, "authenticated": True, "actions": {request["operation"]: action}}
            )
        self._send(200, {"transfer": "basic", "objects": objects})

    def do_GET(self) -> None:
        if self.server.mode != CUTS:  # type: ignore[attr-defined]
            return self._fail()
        size = self.server.sizes.get(self.path.rsplit("/", 1)[-1], 2)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(bytes(size // 2))
        self.wfile.flush()
        self.server.cut += 1  # type: ignore[attr-defined]
        self._cut()

    def do_PUT(self) -> None:
        if self.server.mode != CUTS:  # type: ignore[attr-defined]
            return self._fail()
        self.rfile.read(int(self.headers.get("Content-Length", "2")) // 2)
        self.server.cut += 1  # type: ignore[attr-defined]
        self._cut()

    def _send(self, status: int, answer: dict[str, object]) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.git-lfs+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _fail(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "stalls":  # until the test stops the server
            self.server.stopping.wait(60)  # type: ignore[attr-defined]
            return
        if mode == "closes the connection":
            return self._cut()
        self._send(500, {"message": "internal error"})

    def log_message(self, *args: object) -> None:
        pass


class _BrokenServer(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close waits for every request's thread

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Broken)
        self.mode = mode
        self.sizes: dict[str, int] = {}
        self.cut = 0  # transfers cut off halfway
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


BROKEN = ["answers 500", "closes the connection", "stalls", CUTS]


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
    assert broken.cut > 0 or mode != CUTS  # the transfers began, then broke
    assert "could not upload objects for tensors" in _one_error(proc), proc.stderr
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
    a, bare, server, expected = pushed(shared)
    b = clone_without_objects(bare, tmp_path / "b")
    broken = _BrokenServer(mode)
    _point_at(b, broken.url)
    try:
        proc = b.theta("checkout", check=False)
    finally:
        broken.stop()
    assert broken.cut > 0 or mode != CUTS  # the transfers began, then broke
    assert "could not download objects for tensors" in _one_error(proc), proc.stderr
    assert not (b.path / "model.pt").exists() and not b.objects()  # nothing bad stored
    _point_at(b, server.url)
    b.theta("checkout")
    assert _sha(b.path / "model.pt") == expected
    record(
        f"LFS server {mode}",
        "git theta checkout",
        "one line naming the tensors; nothing written or stored; the checkout from a working "
        "server works",
    )


@pytest.mark.timeout(600)
def test_git_merge_killed_at_random_points_in_the_merge_driver(repo: Repo) -> None:
    state = seeded_state_dict(n=16, size=384, seed=9)
    torch.save(state, repo.path / "model.pt")
    repo.commit_file("model.pt", "base")
    repo.git("switch", "-q", "-c", "theirs")
    theirs = dict(state, **{"layers.3.weight": state["layers.3.weight"] * 2})
    torch.save(theirs, repo.path / "model.pt")
    repo.commit_file("model.pt", "theirs")
    repo.git("switch", "-q", "main")
    ours = dict(state, **{"layers.11.weight": state["layers.11.weight"] - 1})
    torch.save(ours, repo.path / "model.pt")
    ours_commit = repo.commit_file("model.pt", "ours")
    expected = dict(ours, **{"layers.3.weight": theirs["layers.3.weight"]})
    for delay in _delays(5, 1.0):
        _killed(repo, ["git", "merge", "--no-edit", "theirs"], delay)
        _after_kill(repo)
        if (repo.path / ".git" / "MERGE_HEAD").exists():
            aborted = repo.git("merge", "--abort", check=False)
            if aborted.returncode != 0:  # killed between index and work tree: as git says
                repo.git("reset", "-q", "--hard", "ORIG_HEAD")
        _fsck(repo)
        repo.git("reset", "-q", "--hard", ours_commit)
        assert repo.status() == "", f"after a kill at {delay:.3f} s"
        repo.git("merge", "-q", "--no-edit", "theirs")  # the next run completes
        merged = torch.load(repo.path / "model.pt", weights_only=True)
        assert list(merged) == list(expected)
        assert all(torch.equal(merged[k], expected[k]) for k in expected)
        assert repo.status() == ""
        repo.git("reset", "-q", "--hard", ours_commit)
    record(
        f"SIGKILL at {KILLS} random points",
        "git merge (merge driver)",
        "fsck --all clean; `git merge --abort` (or `git reset --hard`) restores ours (git's "
        "`.merge_file_*` temporaries removed); the next merge completes",
    )


WRITER = """
import hashlib, subprocess, sys, torch
from tests.helpers import seeded_state_dict
tree, seed0, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(4):
    path = f"{tree}/model.pt"
    torch.save(seeded_state_dict(n=8, size=256, seed=seed0 + i), path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    subprocess.run(["git", "add", "model.pt"], cwd=tree, check=True)
    subprocess.run(["git", "commit", "-qm", f"{seed0 + i}"], cwd=tree, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, check=True,
                         capture_output=True, text=True).stdout.strip()
    open(log, "a").write(f"{sha} {digest}\\n")
"""

READER = """
import os, subprocess, sys, tempfile
tree, rounds = sys.argv[1], int(sys.argv[2])
for i in range(rounds):
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(out, "index")}
        subprocess.run(["git", f"--work-tree={out}", "checkout", "HEAD", "--", "model.pt"],
                       cwd=tree, env=env, check=True)
"""


@pytest.mark.timeout(600)
def test_four_processes_in_two_worktrees_while_gc_runs(repo: Repo, tmp_path: Path) -> None:
    _save(repo, seed=1)
    repo.commit_file("model.pt", "base")
    second = tmp_path / "second"
    repo.git("worktree", "add", "-q", "-b", "side", str(second))
    log = tmp_path / "commits.txt"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    python = [sys.executable, "-c"]
    procs = [
        subprocess.Popen([*python, WRITER, str(repo.path), "100", str(log)], env=env),
        subprocess.Popen([*python, WRITER, str(second), "200", str(log)], env=env),
        subprocess.Popen([*python, READER, str(repo.path), "6"], env=env),
        subprocess.Popen([*python, READER, str(second), "6"], env=env),
    ]
    gcs = 0
    while any(p.poll() is None for p in procs):
        repo.theta("gc")  # the default grace period, as a user runs it
        gcs += 1
    assert [p.returncode for p in procs] == [0, 0, 0, 0] and gcs > 0
    _fsck(repo)
    history = dict(line.split() for line in log.read_text().splitlines())
    assert len(history) == 8
    repo.theta("gc")
    _all_check_out(repo, history)
    record(
        "4 processes add, commit and check out in 2 worktrees while gc runs",
        "git theta gc",
        "every command succeeds; fsck --all clean; all 8 commits check out bit-exact",
    )
