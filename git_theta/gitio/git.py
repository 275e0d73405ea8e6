"""Running git and git-lfs, and finding a repository's directories."""

from __future__ import annotations

import os
import subprocess
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
