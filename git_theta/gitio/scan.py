"""The history scanner: which blobs a part of history holds, where, and their contents.

Push, fetch, gc, fsck and diff all find their manifests through it. Four scopes:

- ``scan_range``: the commits reachable from some tips and not from others (what a push
  sends), each blob at the first commit and path that introduce it;
- ``scan_trees``: the trees of some revisions (what a checkout of them needs);
- ``scan_index``: this work tree's index;
- ``scan_all``: everything the repository keeps: every ref (branches, tags,
  remote-tracking branches, notes, the stash), every reflog entry (so commits of a deleted
  branch that HEAD's reflog still names, and every stash entry), the HEAD of every worktree
  and the index of every worktree, conflicted stages 1-3 included.

Paths are filtered with ``git check-attr --stdin`` (``theta_only``: the paths git filters
with git-theta by today's attributes); blobs are read through one ``git cat-file --batch``,
only those no larger than ``limit`` that start with ``prefix``, so memory holds one blob at
a time. Each blob is yielded once. Knows nothing of manifests' meaning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from git_theta.errors import UsageError
from git_theta.gitio import attributes, git

DEFAULT_LIMIT = 64 << 20
_NOT_FILES = ("040000", "160000")  # trees and submodule commits hold no file content


@dataclass(frozen=True)
class Blob:
    """A blob found in history: the commit it was found at (a commit id, or ``""`` for an
    index entry), its path, its id and its content."""

    commit: str
    path: str
    blob: str
    data: bytes
    index_of: Path | None = None  # the worktree whose index holds it
    stage: int = 0  # an index entry's merge stage (1-3 while conflicted)

    @property
    def where(self) -> str:
        """Where it was found, for messages."""
        if self.index_of is None:
            return f"{self.path} in {self.commit[:10]}"
        stage = f", merge stage {self.stage}" if self.stage else ""
        return f"{self.path} in the index of {self.index_of}{stage}"


@dataclass(frozen=True)
class _Ref:
    commit: str
    path: str
    blob: str
    index_of: Path | None = None
    stage: int = 0


def is_null(sha: str) -> bool:
    """git's null object id (40 zeros, or 64 in a SHA-256 repository)."""
    return set(sha) == {"0"}


def scan_range(
    top: Path,
    tips: list[str],
    exclude: Iterable[str] = (),
    exclude_remote: str | None = None,
    theta_only: bool = True,
    prefix: bytes | tuple[bytes, ...] = b"{",
    limit: int = DEFAULT_LIMIT,
) -> Iterator[Blob]:
    """Blobs in commits reachable from ``tips`` and not from ``exclude`` (nor from the
    remote-tracking branches of ``exclude_remote``)."""
    if not tips:
        return
    negative = [f"--remotes={exclude_remote}"] if exclude_remote else []
    refs = _log(top, [*tips, "--not", *negative, *exclude])
    yield from _read(top, refs, theta_only, prefix, limit)


def scan_trees(
    top: Path,
    revs: list[str],
    theta_only: bool = True,
    prefix: bytes | tuple[bytes, ...] = b"{",
    limit: int = DEFAULT_LIMIT,
) -> Iterator[Blob]:
    """Blobs in the trees of ``revs`` (each a commit or anything naming a tree)."""
    refs = [_Ref(rev, path, blob) for rev in revs for path, blob in tree_files(top, rev).items()]
    yield from _read(top, refs, theta_only, prefix, limit)


def tree_files(top: Path, rev: str) -> dict[str, str]:
    """path -> blob of the files in the tree ``rev`` names (a commit or anything naming a
    tree); raises UsageError when it names none."""
    tree = git.run(["rev-parse", "--verify", "--quiet", f"{rev}^{{tree}}"], top, check=False)
    if tree.returncode != 0 or rev.startswith("-"):
        raise UsageError(
            f"`{rev}` names no commit or tree in this repository: check the name "
            "(`git log --oneline --all` lists commits)"
        )
    listing = git.decode_path(git.run(["ls-tree", "-r", "-z", "--full-tree", rev], top).stdout)
    files = {}
    for entry in listing.split("\0"):
        meta, _, path = entry.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[1] == "blob":
            files[path] = fields[2]
    return files


def scan_index(
    top: Path,
    theta_only: bool = True,
    prefix: bytes | tuple[bytes, ...] = b"{",
    limit: int = DEFAULT_LIMIT,
) -> Iterator[Blob]:
    """Blobs of this work tree's index, conflicted stages 1-3 included."""
    yield from _read(top, _index(top), theta_only, prefix, limit)


def scan_all(
    top: Path,
    theta_only: bool = True,
    prefix: bytes | tuple[bytes, ...] = b"{",
    limit: int = DEFAULT_LIMIT,
) -> Iterator[Blob]:
    """Blobs that anything in the repository keeps (see the module's docstring)."""
    refs = _log(top, ["--all", "--reflog"]) + _indexes(top)  # a commit names a blob best
    yield from _read(top, refs, theta_only, prefix, limit)


def reachable_blobs(top: Path) -> dict[str, int]:
    """Every blob git itself keeps (what ``git gc`` would not prune), with its size: those
    reachable from any ref (tags of blobs and trees included; replacements not followed),
    any reflog entry, and the index of any worktree, also one whose directory is gone."""
    listing = git.run(
        [
            "--no-replace-objects",
            "rev-list",
            "--objects",
            "--all",
            "--reflog",
            "--indexed-objects",
        ],
        top,
    ).stdout.decode(errors="replace")
    shas = sorted({line.split(" ", 1)[0] for line in listing.splitlines() if line})
    return _blob_sizes(top, shas)


def read_blobs(
    top: Path, shas: list[str], prefix: bytes | tuple[bytes, ...]
) -> Iterator[tuple[str, bytes]]:
    """(sha, content) of those blobs that start with ``prefix``, through one
    ``git cat-file --batch`` (see ``git.blobs_starting_with``)."""
    yield from git.blobs_starting_with(shas, prefix, top)


def _log(top: Path, args: list[str]) -> list[_Ref]:
    """Blobs that the commits ``git log ARGS`` walks introduce, each at the first commit (in
    git's walk order) it appears at under each of its paths. Every blob of every walked commit's tree is
    among them, or in a parent's tree the walk excludes: merges are compared with each
    parent (``-m``), root commits with the empty tree (``--root``)."""
    out = git.run(
        [
            "log",
            "--format=commit %H",
            "--raw",
            "-z",
            "--no-abbrev",
            "--root",
            "--diff-merges=separate",  # each parent, whatever log.diffMerges says
            "--no-renames",
            "--no-textconv",
            "--no-ext-diff",
            *args,
            "--",
        ],
        top,
    ).stdout
    refs: dict[tuple[str, str], _Ref] = {}  # by (blob, path): the path filter comes later
    for header, changes in git.raw_log(out):
        commit = header.strip()
        for meta, path in changes:
            if len(meta) < 5 or meta[1] in _NOT_FILES or is_null(meta[3]):
                continue
            refs.setdefault((meta[3], path), _Ref(commit, path, meta[3]))
    return list(refs.values())


def _worktrees(top: Path) -> list[Path]:
    """The work trees of the repository (this one included) that exist on disk."""
    listing = git.decode_path(git.run(["worktree", "list", "--porcelain", "-z"], top).stdout)
    paths = []
    for field in listing.split("\0"):
        if field.startswith("worktree "):
            path = Path(field[len("worktree ") :])
            if (path / ".git").exists():
                paths.append(path)
    return paths


def _index(place: Path) -> list[_Ref]:
    """Every entry (all stages) of the index of the work tree at ``place``."""
    return [_Ref("", e.path, e.blob, place, e.stage) for e in git.index_entries(place)]


def _indexes(top: Path) -> list[_Ref]:
    """Every entry (all stages) of the index of every worktree."""
    return [ref for place in _worktrees(top) for ref in _index(place)]


def _read(
    top: Path,
    refs: list[_Ref],
    theta_only: bool,
    prefix: bytes | tuple[bytes, ...],
    limit: int,
) -> Iterator[Blob]:
    """The blobs of ``refs`` at git-theta paths (when ``theta_only``), of at most ``limit``
    bytes and starting with ``prefix``, each once (at its first ref)."""
    if theta_only:
        wanted = set(attributes.theta_paths(top, sorted({r.path for r in refs})))
        refs = [r for r in refs if r.path in wanted]
    first: dict[str, _Ref] = {}
    for ref in refs:
        first.setdefault(ref.blob, ref)
    small = _blobs_within(top, sorted(first), limit)
    for blob, data in git.blobs_starting_with(small, prefix, top):
        ref = first[blob]
        yield Blob(ref.commit, ref.path, blob, data, ref.index_of, ref.stage)


def _blobs_within(top: Path, shas: list[str], limit: int) -> list[str]:
    """Those of ``shas`` that are blobs of at most ``limit`` bytes."""
    return [sha for sha, size in _blob_sizes(top, shas).items() if size <= limit]


def _blob_sizes(top: Path, shas: list[str]) -> dict[str, int]:
    """Those of ``shas`` that are blobs, with their sizes."""
    if not shas:
        return {}
    check = git.run(
        ["cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
        top,
        input="".join(s + "\n" for s in shas).encode(),
    )
    sizes = {}
    for line in check.stdout.decode().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "blob":
            sizes[fields[0]] = int(fields[2])
    return sizes
