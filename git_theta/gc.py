"""``git theta gc``: delete the objects nothing in the repository needs any more, and the
temporary files of processes that were killed.

Needed is what any manifest git keeps names: every blob reachable from a ref (tags of blobs
included, replacements not followed), a reflog entry (stash entries among them) or the
index of any worktree (``scan.reachable_blobs``, git's own notion of what it keeps), at any
path. A damaged manifest's objects are kept too, and a large one is read in pieces: every
object id in its text counts. git-lfs's name for an object
(the hard link made for a push) goes with it unless an LFS pointer in history names the
same oid. Objects and temporary files modified after the expiry are kept whatever, so a
``git add`` running meanwhile never loses an object it has just written (``put`` gives an
object it finds already stored a new modification time for the same reason, and gc looks
at an object's time again just before deleting it). A store that ``lfs.storage`` puts
outside the repository may hold other repositories' objects: gc refuses to touch it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from git_theta.errors import ManifestError, UsageError
from git_theta.gitio import git, scan
from git_theta.manifest import looks_like_manifest, parse_if_manifest
from git_theta.repo import Repo

DEFAULT_EXPIRY = "2.weeks.ago"  # git's default for gc.pruneExpire
_LFS_POINTER = b"version https://git-lfs"
_OID_TEXT = re.compile(rb"[0-9a-f]{64}")
_LFS_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.MULTILINE)


@dataclass(frozen=True)
class Deletion:
    """One file gc deletes (or would)."""

    kind: str  # "object" or "temporary file"
    name: str  # the oid, or the temporary file's path
    size: int


@dataclass
class Result:
    """What one gc did."""

    deleted: list[Deletion] = field(default_factory=list)
    freed: int = 0  # bytes given back to the file system
    kept_recent: int = 0  # unneeded files spared because they are newer than the expiry
    needed: int = 0
    failed: list[tuple[str, OSError]] = field(default_factory=list)  # not deleted, and why


def expiry_cutoff(repo: Repo, when: str | None) -> float | None:
    """The time before which unneeded files may be deleted, from ``--prune=<when>`` (else
    ``gc.pruneExpire``, else two weeks ago); None for ``never``. The date is read by git's
    own expiry-date parser, so every form git gc takes works and a typo is an error."""
    text = when if when is not None else repo.git_config.get("gc.pruneexpire", DEFAULT_EXPIRY)
    parsed = repo.git(
        ["-c", f"theta.expiry={text}", "config", "--type=expiry-date", "theta.expiry"],
        check=False,
    )
    value = parsed.stdout.decode().strip()
    if parsed.returncode != 0 or not value.isdigit():
        raise UsageError(
            f"`{text}` is not an expiry date git understands: try `now`, `2.weeks.ago`, "
            "`2026-01-31` or `never`"
        )
    stamp = int(value)
    if stamp == 0:  # never
        return None
    return min(float(stamp), time.time() + 1)  # now and all: everything older than now


def needed_objects(repo: Repo) -> tuple[set[str], set[str]]:
    """(oids that manifests anything keeps need, oids that LFS pointers name).

    Every blob git keeps counts (``scan.reachable_blobs``), whatever its path or size: a
    manifest larger than the scanner's limit is read in pieces, and every object id in its
    text is kept.
    """
    manifests: set[str] = set()
    pointers: set[str] = set()
    sizes = scan.reachable_blobs(repo.top)
    small = sorted(sha for sha, size in sizes.items() if size <= scan.DEFAULT_LIMIT)
    for _, data in scan.read_blobs(repo.top, small, (b"{", _LFS_POINTER)):
        if data.startswith(_LFS_POINTER):
            pointers.update(m.decode() for m in _LFS_OID.findall(data[:1024]))
        elif looks_like_manifest(data):
            try:
                manifest = parse_if_manifest(data)
            except ManifestError:  # damaged: keep whatever it might name
                manifests.update(m.decode() for m in _OID_TEXT.findall(data))
                continue
            if manifest is not None:
                manifests.update(manifest.objects())
    for sha in sorted(sha for sha, size in sizes.items() if size > scan.DEFAULT_LIMIT):
        manifests.update(_oids_in_large_blob(repo, sha))
    return manifests, pointers


def _oids_in_large_blob(repo: Repo, sha: str) -> set[str]:
    """Every object id in the text of a large blob that starts like a manifest (JSON)."""
    found: set[str] = set()
    tail = b""
    for index, piece in enumerate(git.stream_blob(sha, repo.top)):
        if index == 0 and not piece.startswith(b"{"):
            return found  # not JSON: no manifest
        text = tail + piece
        found.update(m.decode() for m in _OID_TEXT.findall(text))
        tail = text[-63:]  # an id cut by the piece boundary is found with the next piece
    return found


def _shared_store(repo: Repo) -> Path | None:
    """The object directory when ``lfs.storage`` puts it outside this repository's git
    directory (other repositories may keep objects there too), else None."""
    try:
        repo.lfs_dir.resolve().relative_to(repo.common_dir.resolve())
    except ValueError:
        return repo.lfs_dir
    return None


def gc(
    repo: Repo,
    prune: str | None = None,
    dry_run: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Result:
    """Delete (or with ``dry_run`` list) unneeded objects and old temporary files;
    ``progress(stage, done, total)`` is told how far it is."""
    shared = _shared_store(repo)
    if shared is not None:
        raise UsageError(
            f"objects are kept in {shared} (lfs.storage), outside this repository, where "
            "other repositories may keep theirs: gc cannot see what those need, so it "
            "deletes nothing there"
        )
    cutoff = expiry_cutoff(repo, prune)
    needed, pointed = needed_objects(repo)
    store = repo.store
    result = Result(needed=len(needed))
    stored_objects = list(store.objects())
    for done, (oid, stored) in enumerate(stored_objects, 1):
        if progress is not None:
            progress("checking objects", done, len(stored_objects))
        if oid in needed:
            continue
        if cutoff is None or stored.mtime >= cutoff:
            result.kept_recent += 1
            continue
        if dry_run:
            result.deleted.append(Deletion("object", oid, stored.size))
            continue
        try:
            freed = store.delete(oid, lfs_copy=oid not in pointed, older_than=cutoff)
        except OSError as exc:
            result.failed.append((f"object {oid}", exc))
            continue
        if freed is None:  # stored again meanwhile
            result.kept_recent += 1
            continue
        result.deleted.append(Deletion("object", oid, stored.size))
        result.freed += freed
    for tmp in store.temporary_files():
        if cutoff is None or tmp.mtime >= cutoff:
            result.kept_recent += 1
            continue
        if not dry_run:
            try:
                tmp.path.unlink()
            except FileNotFoundError:
                continue  # its process finished meanwhile
            except OSError as exc:
                result.failed.append((f"temporary file {tmp.path}", exc))
                continue
            result.freed += tmp.size
        result.deleted.append(Deletion("temporary file", str(tmp.path), tmp.size))
    if dry_run:
        result.freed = sum(d.size for d in result.deleted)
    elif result.deleted:
        store.forget_deleted()
    return result


def display(path: str, top: Path) -> str:
    """``path`` relative to the work tree's top when inside it."""
    try:
        return str(Path(path).relative_to(top))
    except ValueError:
        return path
