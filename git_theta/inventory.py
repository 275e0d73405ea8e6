"""What ``git theta ls-files`` reports: the checkpoints in the index and their sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from git_theta.errors import ManifestError
from git_theta.gitio import attributes, git
from git_theta.manifest import Manifest, parse_if_manifest


@dataclass(frozen=True)
class TrackedFile:
    path: str
    manifest: Manifest | None  # None: the index holds something that is not a manifest
    problem: str = ""


def tracked_files(cwd: Path | str = ".") -> list[TrackedFile]:
    """Every path in the index that git-theta filters, with its manifest."""
    import git as gitpython  # GitPython: reads index entries and blobs without a subprocess each

    top = git.toplevel(cwd)
    repo = gitpython.Repo(top)
    entries = {
        str(path): entry for (path, stage), entry in repo.index.entries.items() if stage == 0
    }
    result = []
    for path in attributes.theta_paths(sorted(entries), top):
        data = repo.odb.stream(entries[path].binsha).read()
        try:
            manifest = parse_if_manifest(data)
        except ManifestError as exc:
            result.append(TrackedFile(path, None, str(exc)))
            continue
        problem = "" if manifest else "stored without git-theta (run `git add --renormalize`)"
        result.append(TrackedFile(path, manifest, problem))
    return result
