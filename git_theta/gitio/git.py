"""Running git, finding a repository's directories, reading its config and index.

Every function takes the work tree's top directory (``top``) it runs git in; ``None`` runs
git outside any repository (``git config --global``, ``git lfs version``). The index and
objects are read through git's plumbing, never by parsing git's files, so SHA-256
repositories and every index version work alike.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from git_theta.errors import GitError, GitLfsMissingError, NotARepositoryError


def run(
    args: list[str],
    top: Path | None,
    input: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git ARGS`` in ``top``; raises GitError naming the command when it fails and
    ``check``."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=top,
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


def output(args: list[str], top: Path | None) -> str:
    """Standard output of ``git ARGS``, stripped."""
    return run(args, top).stdout.decode().strip()


def decode_path(data: bytes) -> str:
    """A path as git prints it (bytes that need not be UTF-8, kept by surrogate escapes)."""
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Location:
    """Where a repository's parts are, as ``git rev-parse`` reports them."""

    top: Path  # the work tree's root
    git_dir: Path  # this worktree's git directory
    common_dir: Path  # shared by every worktree: objects, refs, lfs
    hooks_dir: Path  # where git runs hooks from (core.hooksPath or <common dir>/hooks)
    object_format: str  # "sha1" or "sha256"
    prefix: str  # the starting directory relative to ``top`` ("" at the top, else "a/b/")
    bare: bool = False  # a bare repository: no work tree, ``top`` is the git directory


# what `git rev-parse` reports of a repository besides its work tree: git directory, common
# directory, hooks directory, object format
_DIRS = ["--absolute-git-dir", "--git-common-dir", "--git-path", "hooks", "--show-object-format"]


def locate(start: Path, bare_ok: bool = False) -> Location:
    """The repository around ``start``, in one ``git rev-parse`` (and, when ``bare_ok``, a
    second for a bare repository); raises NotARepositoryError outside any."""
    proc = run(
        ["rev-parse", "--path-format=absolute", "--show-toplevel", *_DIRS, "--show-prefix"],
        start,
        check=False,
    )
    lines = decode_path(proc.stdout).split("\n")
    if proc.returncode != 0 or len(lines) < 6 or not lines[0]:
        if bare_ok:
            return _locate_bare(start)
        raise NotARepositoryError(str(start.resolve()))
    top, git_dir, common, hooks, fmt, prefix = lines[:6]
    return Location(Path(top), Path(git_dir), Path(common), Path(hooks), fmt, prefix)


def _locate_bare(start: Path) -> Location:
    """A bare repository at ``start`` (its ``top`` is its git directory, where git commands
    run); raises NotARepositoryError when there is none."""
    proc = run(
        ["rev-parse", "--path-format=absolute", "--is-bare-repository", *_DIRS], start, check=False
    )
    lines = decode_path(proc.stdout).split("\n")
    if proc.returncode != 0 or len(lines) < 5 or lines[0] != "true":
        raise NotARepositoryError(str(start.resolve()))
    _, git_dir, common, hooks, fmt = lines[:5]
    return Location(Path(git_dir), Path(git_dir), Path(common), Path(hooks), fmt, "", bare=True)


def read_config(top: Path | None) -> dict[str, str]:
    """Every git config value in effect (all scopes, ``git -c`` and includes), by key as git
    lists it (section and name lowercased); the last of several values wins, as in git."""
    proc = run(["config", "--null", "--list"], top, check=False)
    values: dict[str, str] = {}
    for entry in decode_path(proc.stdout).split("\0"):
        if entry:
            key, newline, value = entry.partition("\n")
            values[key] = value if newline else "true"  # `[core] bare` alone means true
    return values


def index_blob(top: Path, path: str) -> bytes | None:
    """The content of ``path``'s blob in the index (stage 0), or None if it is not there."""
    proc = run(["cat-file", "blob", f":{path}"], top, check=False)
    return proc.stdout if proc.returncode == 0 else None


@dataclass(frozen=True)
class IndexEntry:
    """One entry of the index: mode, blob id, merge stage (0, or 1-3 while conflicted), path
    relative to the work tree's root."""

    mode: str
    blob: str
    stage: int
    path: str
    skip_worktree: bool = False  # outside the sparse-checkout: git keeps no work-tree file


_NOT_FILES = ("040000", "160000")  # sparse-index directories and submodule commits


def index_entries(
    top: Path, pathspecs: Iterable[str] = (), at: Path | None = None
) -> list[IndexEntry]:
    """Entries of the index of the worktree at ``top`` (every stage), through
    ``git ls-files -s -t``; ``pathspecs`` are read relative to ``at`` (default ``top``)."""
    args = ["ls-files", "-s", "-t", "-z", "--full-name", "--", *pathspecs]
    listing = decode_path(run(args, at or top).stdout)
    entries = []
    for record in listing.split("\0"):
        meta, _, path = record.partition("\t")
        fields = meta.split()  # tag (S: skip-worktree), mode, blob, stage
        if len(fields) == 4 and fields[1] not in _NOT_FILES:
            skip = fields[0] == "S"
            entries.append(IndexEntry(fields[1], fields[2], int(fields[3]), path, skip))
    return entries


def raw_log(out: bytes) -> list[tuple[str, list[tuple[list[str], str]]]]:
    """``git log --format="commit …" --raw -z`` output as (what follows "commit ", then per
    changed file the fields of its ``:<modes> <ids> <status>`` line and its path) per commit.
    With -z, "commit …" ends with a NUL (a newline may lead the field after it), then each
    change line and each path are ended by a NUL."""
    commits: list[tuple[str, list[tuple[list[str], str]]]] = []
    fields = iter(decode_path(out).split("\0"))
    for field in fields:
        field = field.lstrip("\n")
        if field.startswith("commit "):
            commits.append((field[len("commit ") :], []))
        elif field.startswith(":") and commits:
            commits[-1][1].append((field[1:].split(), next(fields, "")))
    return commits


def require_lfs() -> str:
    """The ``git lfs version`` line; raises GitLfsMissingError when git-lfs is missing."""
    proc = run(["lfs", "version"], None, check=False)
    if proc.returncode != 0:
        raise GitLfsMissingError()
    return proc.stdout.decode().strip()


def stream_blob(sha: str, top: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The content of blob ``sha`` in pieces of ``chunk`` bytes (memory holds one piece);
    the reader may stop early."""
    proc = subprocess.Popen(
        ["git", "cat-file", "blob", sha],
        cwd=top,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        while piece := proc.stdout.read(chunk):
            yield piece
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def blobs_starting_with(
    shas: list[str], prefix: bytes | tuple[bytes, ...], top: Path
) -> Iterator[tuple[str, bytes]]:
    """(sha, content) of those blobs whose content starts with ``prefix`` (or one of several),
    read through one ``git cat-file --batch``; the others are read past in pieces and
    dropped, so memory holds one matching blob at most."""
    prefixes = (prefix,) if isinstance(prefix, bytes) else prefix
    head_size = max(len(p) for p in prefixes)
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"],
        cwd=top,
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
            head = proc.stdout.read(min(size, head_size))
            if head.startswith(prefixes):
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
