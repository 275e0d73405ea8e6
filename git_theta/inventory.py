"""What ``git theta ls-files`` reports: the checkpoints in the index and their sizes.

The index is read with ``git ls-files -s`` and its blobs with one ``git cat-file --batch``,
so SHA-256 repositories and every index version work.
"""

from __future__ import annotations

from dataclasses import dataclass

from git_theta.errors import ManifestError
from git_theta.formats.whole import TEXT_MAX_BYTES, is_small_text
from git_theta.gitio import git
from git_theta.manifest import Manifest, parse_if_manifest
from git_theta.repo import Repo

_NOT_MANIFEST = "stored without git-theta (run `git add --renormalize`)"
_TEXT = "text in no checkpoint format, kept in git as it is"


@dataclass(frozen=True)
class TrackedFile:
    path: str
    manifest: Manifest | None  # None: the index holds something that is not a manifest
    problem: str = ""


def tracked_files(repo: Repo) -> list[TrackedFile]:
    """Every path in the index (stage 0) that git-theta filters, with its manifest."""
    blobs = {e.path: e.blob for e in repo.index_entries() if e.stage == 0}
    paths = repo.theta_paths(blobs)
    contents = dict(git.blobs_starting_with(sorted({blobs[p] for p in paths}), b"{", repo.top))
    result = []
    for path in paths:
        try:
            manifest = parse_if_manifest(contents.get(blobs[path], b""))
        except ManifestError as exc:
            result.append(TrackedFile(path, None, str(exc)))
            continue
        if manifest is None and _kept_as_text(repo, blobs[path]):
            result.append(TrackedFile(path, None, _TEXT))
            continue
        result.append(TrackedFile(path, manifest, "" if manifest else _NOT_MANIFEST))
    return result


def _kept_as_text(repo: Repo, blob: str) -> bool:
    """Whether ``blob`` is text git-theta keeps in git as it is (``formats.whole``)."""
    size = repo.git(["cat-file", "-s", blob], check=False).stdout.strip()
    if not size.isdigit() or int(size) > TEXT_MAX_BYTES:
        return False
    return is_small_text(repo.git(["cat-file", "blob", blob]).stdout)
