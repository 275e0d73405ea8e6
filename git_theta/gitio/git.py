"""Running git and git-lfs, and finding a repository's directories."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from git_theta.errors import GitError, GitLfsMissingError, NotARepositoryError


def run(
    args: list[str],
    cwd: Path | str | None = None,
    input: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git ARGS``; raises GitError naming the command when it fails and ``check``."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env={**os.environ, **env} if env else None,
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    if check and proc.returncode != 0:
        raise GitError(f"`git {' '.join(args[:3])}` failed", proc.stderr.decode(errors="replace"))
    return proc


def output(args: list[str], cwd: Path | str | None = None) -> str:
    """Standard output of ``git ARGS``, stripped."""
    return run(args, cwd=cwd).stdout.decode().strip()


def toplevel(cwd: Path | str = ".") -> Path:
    """The work tree root of the repository around ``cwd``."""
    proc = run(["rev-parse", "--show-toplevel"], cwd=cwd, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise NotARepositoryError(str(Path(cwd).resolve()))
    return Path(proc.stdout.decode().strip())


@cache
def _common_dir(cwd: str) -> Path:
    proc = run(["rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=cwd, check=False)
    if proc.returncode != 0:
        raise NotARepositoryError(str(Path(cwd).resolve()))
    return Path(proc.stdout.decode().strip())


def common_dir(cwd: Path | str = ".") -> Path:
    """The repository's common git directory (shared by all its worktrees)."""
    return _common_dir(str(Path(cwd).resolve()))


def lfs_dir(cwd: Path | str = ".") -> Path:
    """Where git-lfs keeps objects for this repository (``lfs.storage`` or ``.git/lfs``)."""
    proc = run(["config", "--get", "lfs.storage"], cwd=cwd, check=False)
    configured = proc.stdout.decode().strip()
    base = common_dir(cwd)
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() else base / path
    return base / "lfs"


def index_blob(path: str, cwd: Path | str = ".") -> bytes | None:
    """The content of ``path``'s blob in the index (stage 0), or None if it is not there."""
    proc = run(["cat-file", "blob", f":{path}"], cwd=cwd, check=False)
    return proc.stdout if proc.returncode == 0 else None


def require_lfs() -> str:
    """The ``git lfs version`` line; raises GitLfsMissingError when git-lfs is missing."""
    proc = run(["lfs", "version"], check=False)
    if proc.returncode != 0:
        raise GitLfsMissingError()
    return proc.stdout.decode().strip()


def blobs_starting_with(
    shas: list[str], prefix: bytes, cwd: Path | str = "."
) -> Iterator[tuple[str, bytes]]:
    """(sha, content) of those blobs whose content starts with ``prefix``, read through one
    ``git cat-file --batch``; the others are read past in pieces and dropped."""
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        assert proc.stdin is not None
        try:
            with proc.stdin:
                for sha in shas:
                    proc.stdin.write(sha.encode() + b"\n")
        except BrokenPipeError:  # the reader stopped early and closed the pipe
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for _ in shas:
            header = proc.stdout.readline().split()
            if len(header) != 3:  # "<sha> missing"
                continue
            sha, size = header[0].decode(), int(header[2])
            head = proc.stdout.read(min(size, len(prefix)))
            if head == prefix:
                yield sha, head + proc.stdout.read(size - len(head))
            else:
                left = size - len(head)
                while left:
                    left -= len(proc.stdout.read(min(left, 1 << 20)))
            proc.stdout.read(1)  # the newline after each object
    finally:
        proc.stdout.close()
        proc.wait()
        writer.join()
