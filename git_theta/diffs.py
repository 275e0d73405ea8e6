"""The checkpoints two versions of a repository hold, compared (``git theta diff``), per
commit (``git theta log``), or one shown (``git theta show``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from git_theta import diffing, experiments
from git_theta import filter as theta_filter
from git_theta.errors import ManifestError, UsageError
from git_theta.gitio import git
from git_theta.gitio.scan import is_null, tree_files
from git_theta.manifest import Manifest, looks_like_manifest, parse_if_manifest
from git_theta.repo import Repo

__all__ = [
    "as_text",
    "diff",
    "is_null",
    "load_spec",
    "log",
    "manifest_of_blob",
    "manifest_of_file",
    "side",
]


def _parse(data: bytes, where: str) -> Manifest | None:
    if not looks_like_manifest(data):
        return None
    try:
        return parse_if_manifest(data)
    except ManifestError as exc:
        raise UsageError(f"{where}: {exc}") from exc


def manifest_of_blob(repo: Repo, blob: str) -> Manifest | None:
    """The manifest in blob ``blob`` (None for git's null id or a blob that is none)."""
    if not blob or blob == "." or is_null(blob):
        return None
    return _parse(repo.git(["cat-file", "blob", blob]).stdout, f"blob {blob[:10]}")


def side(repo: Repo, path: str, file: str, blob: str) -> Manifest | None:
    """One side of git's external diff: absent (``/dev/null``, id ``.``), the blob git
    names, or (null id: a work-tree file git did not hash) the file itself."""
    if file == "/dev/null" or blob == ".":
        return None
    if blob and not is_null(blob):
        known = repo.git(["cat-file", "-e", f"{blob}^{{blob}}"], check=False).returncode == 0
        if known:
            return manifest_of_blob(repo, blob)
    return manifest_of_file(repo, path, Path(file))


def manifest_of_file(repo: Repo, path: str, file: Path) -> Manifest | None:
    """The manifest of the work-tree file ``file`` (git path ``path``): the manifest it
    holds, or the one ``git add`` would make of the checkpoint (unchanged tensors reuse the
    index's records, so only changed ones are hashed and stored)."""
    if not file.is_file():
        return None
    with open(file, "rb") as f:
        first = f.read(1)
    if first == b"{":
        found = _parse(file.read_bytes(), path)
        if found is not None:
            return found
    data = theta_filter.clean(file, repo.index_blob(path), repo.store, repo.config, name=path)
    return Manifest.from_bytes(data)


def _index(repo: Repo) -> dict[str, str]:
    return {e.path: e.blob for e in repo.index_entries() if e.stage == 0}


def _selected(repo: Repo, paths: list[str], pathspecs: list[str]) -> list[str]:
    """The git-theta files among ``paths`` that ``pathspecs`` (paths or directories,
    relative to where the command runs) name."""
    if pathspecs:
        wanted = []
        for spec in pathspecs:
            full = (repo.start_dir / spec).resolve()
            try:
                wanted.append(full.relative_to(repo.top.resolve()).as_posix())
            except ValueError:
                raise UsageError(f"`{spec}` is outside the repository") from None
        paths = [
            p
            for p in paths
            if any(w in (".", p) or p.startswith(w.rstrip("/") + "/") for w in wanted)
        ]
    return repo.theta_paths(paths)


def diff(
    repo: Repo, revs: list[str], pathspecs: list[str], cached: bool, figures: bool = True
) -> list[diffing.FileDiff]:
    """What changed in each git-theta file between two versions (see ``git theta diff``)."""
    if len(revs) == 1 and ".." in revs[0]:  # A..B, A...B (from their merge base), as git
        left, dots, right = (
            revs[0].partition("...") if "..." in revs[0] else revs[0].partition("..")
        )
        left, right = left or "HEAD", right or "HEAD"
        if dots == "...":
            base = repo.git(["merge-base", left, right], check=False)
            if base.returncode != 0:
                raise UsageError(f"`{revs[0]}`: `{left}` and `{right}` have no merge base")
            left = base.stdout.decode().strip()
        revs = [left, right]
    if len(revs) == 2:
        old, new = tree_files(repo.top, revs[0]), tree_files(repo.top, revs[1])
        worktree = False
    else:
        if revs:
            old = tree_files(repo.top, revs[0])
        elif cached:
            head = repo.git(["rev-parse", "-q", "--verify", "HEAD^{tree}"], check=False)
            old = tree_files(repo.top, "HEAD") if head.returncode == 0 else {}
        else:
            old = _index(repo)
        new = _index(repo)
        worktree = not cached
    unmerged = {e.path for e in repo.index_entries() if e.stage} if len(revs) != 2 else set()
    differing = _differing(repo, revs) if worktree else None
    diffs = []
    for path in _selected(repo, sorted({*old, *new, *unmerged}), pathspecs):
        if path in unmerged:
            diffs.append(diffing.FileDiff(path, unmerged=True))
            continue
        if differing is not None and path not in differing:
            continue  # git sees the work-tree file as it was staged: nothing to hash
        before = manifest_of_blob(repo, old[path]) if path in old else None
        if worktree:
            after = manifest_of_file(repo, path, repo.top / path) if path in new else None
        else:
            after = manifest_of_blob(repo, new[path]) if path in new else None
        if before is None and after is None:
            continue
        if before is not None and after is not None and before.to_bytes() == after.to_bytes():
            continue
        diffs.append(diffing.compare(repo, path, before, after, figures))
    return diffs


def _differing(repo: Repo, revs: list[str]) -> set[str]:
    """The paths whose work-tree file differs from the index (or from ``revs[0]``), as git
    sees them (its stat data first: unchanged files are not read)."""
    proc = repo.git(["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", *revs[:1], "--"])
    return {p for p in git.decode_path(proc.stdout).split("\0") if p}


@dataclass
class LoggedFile:
    diff: diffing.FileDiff
    new_bytes: int  # bytes of objects this version needs that the previous one did not


@dataclass
class LogEntry:
    commit: str
    subject: str
    files: list[LoggedFile]
    metadata: dict[str, Any] = field(default_factory=dict)  # a run's trailers (``runs``)


def log(repo: Repo, revs: list[str], pathspecs: list[str]) -> list[LogEntry]:
    """Per commit (``git log`` order), the checkpoints it changed."""
    for rev in revs:
        if rev.startswith("-"):
            raise UsageError(f"`{rev}`: options go before `git theta log`'s revisions")
    proc = repo.git(
        [
            "log",
            "--format=commit %H%x09%s",
            "--raw",
            "-z",
            "--no-abbrev",
            "--no-renames",
            "--root",
            *revs,
            "--",
            *pathspecs,
        ],
        check=False,
    )
    if proc.returncode != 0:
        raise UsageError(
            f"`git log {' '.join(revs)}` failed: {proc.stderr.decode(errors='replace').strip()}"
        )
    entries = []
    for header, found in git.raw_log(proc.stdout):
        sha, _, subject = header.partition("\t")
        changes = [(path, meta[2], meta[3]) for meta, path in found if len(meta) >= 5]
        entries.append((sha.strip(), subject.strip(), changes))
    theta = set(repo.theta_paths(sorted({p for _, _, changes in entries for p, _, _ in changes})))
    result = []
    for sha, subject, changes in entries:
        files = []
        for path, old_blob, new_blob in changes:
            if path not in theta:
                continue
            before, after = manifest_of_blob(repo, old_blob), manifest_of_blob(repo, new_blob)
            if before is None and after is None:
                continue
            known = set(before.objects()) if before else set()
            sizes = {
                o.oid: o.size for r in (after.tensors.values() if after else []) for o in r.objects
            }
            fresh = sum(size for oid, size in sizes.items() if oid not in known)
            files.append(LoggedFile(diffing.compare(None, path, before, after, False), fresh))
        if files:
            result.append(LogEntry(sha, subject, files))
    if result:
        bodies = repo.git(
            ["log", "--no-walk=unsorted", "--format=%H%x00%B%x00", *[e.commit for e in result]]
        )
        fields = bodies.stdout.decode(errors="replace").split("\0")
        metadata = {
            fields[i].strip(): experiments.parse_trailers(fields[i + 1])
            for i in range(0, len(fields) - 1, 2)
        }
        for entry in result:
            entry.metadata = metadata.get(entry.commit, {})
    return result


def load_spec(repo: Repo, spec: str) -> tuple[str, Manifest]:
    """The manifest ``[REV:]PATH`` names (no REV: the index's version)."""
    if ":" in spec:
        rev, _, path = spec.partition(":")
        proc = git.run(["cat-file", "blob", spec], repo.start_dir, check=False)  # ./ as git
        where = spec
        if proc.returncode != 0:
            raise UsageError(f"`{spec}`: no such file in `{rev or 'the index'}`")
        data = proc.stdout
    else:
        full = (repo.start_dir / spec).resolve()
        try:
            path = full.relative_to(repo.top.resolve()).as_posix()
        except ValueError:
            raise UsageError(f"`{spec}` is outside the repository") from None
        blob = repo.index_blob(path)
        if blob is None:
            raise UsageError(f"`{spec}` is not in the index: name a revision, `REV:{path}`")
        data, where = blob, path
    manifest = _parse(data, where)
    if manifest is None:
        raise UsageError(f"`{where}` is not a checkpoint stored by git-theta")
    return where, manifest


def as_text(file: Path) -> list[str]:
    """A checkpoint file (or a manifest) as lines of text that change where it changes:
    one per tensor (name, dtype, shape, the start of its identity hash), one per value. A
    file that is neither (a version from before the path was tracked) is one line."""
    from git_theta import formats
    from git_theta.errors import ThetaError
    from git_theta.store import file_sha256
    from git_theta.tensors import identity_hash

    try:
        data_head = file.read_bytes()[:1] if file.is_file() else b""
        manifest = None
        if data_head == b"{":
            manifest = _parse(file.read_bytes(), str(file))
        if manifest is not None:
            fmt = manifest.format
            rows = [(n, r.dtype, tuple(r.shape), r.hash) for n, r in manifest.tensors.items()]
        else:
            checkpoint = formats.detect(file, str(file)).read(file, str(file))
            fmt = checkpoint.format
            rows = [
                (n, t.dtype, tuple(t.shape), identity_hash(t.dtype, t.shape, t.load()))
                for n, t in checkpoint.tensors.items()
            ]
    except (ThetaError, OSError) as exc:
        size = file.stat().st_size if file.is_file() else 0
        digest = file_sha256(file)[:12] if file.is_file() else "-"
        return [f"not a checkpoint ({size} bytes, sha256 {digest}): {exc}"]
    lines = [f"checkpoint {fmt.get('name')}, {len(rows)} tensors"]
    lines += [f"tensor {n} {d} {list(s)} {h[:12]}" for n, d, s, h in sorted(rows)]
    lines += [f"value {path}: {text}" for path, text in diffing.values_of(fmt)]
    return lines
