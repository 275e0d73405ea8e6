"""What ``git theta ls-files`` reports: the checkpoints in the index and their sizes.

The index is read with ``git ls-files -s`` and its blobs with one ``git cat-file --batch``,
so SHA-256 repositories and every index version work.
"""

from __future__ import annotations

from dataclasses import dataclass

from git_theta.errors import ManifestError
from git_theta.gitio import git
from git_theta.manifest import Manifest, parse_if_manifest
from git_theta.repo import Repo

_NOT_MANIFEST = "stored without git-theta (run `git add --renormalize`)"


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
        result.append(TrackedFile(path, manifest, "" if manifest else _NOT_MANIFEST))
    return result
