"""Manifests found in git: in the commits a push sends, in the trees of revisions.

Everything here is derived from the manifests in the commits themselves, so it works for
commits made anywhere (clones, merges, rebases, cherry-picks) with no bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from git_theta.errors import ManifestError
from git_theta.gitio import git
from git_theta.manifest import Manifest, looks_like_manifest, parse_if_manifest
from git_theta.repo import Repo

MANIFEST_LIMIT = 64 << 20  # no manifest is this big; larger blobs are not read


def _is_zero(sha: str) -> bool:
    """git's null object id (40 zeros, or 64 in a SHA-256 repository)."""
    return set(sha) == {"0"}


@dataclass(frozen=True)
class Located:
    """A manifest found in git, with where it was found (for messages)."""

    where: str
    manifest: Manifest


def _read_blobs(repo: Repo, shas: Iterable[str]) -> dict[str, bytes]:
    """Contents of the blobs among ``shas`` that could be manifests: small enough and
    starting with ``{``. Others are skipped as they stream by, so memory holds one at most."""
    shas = sorted(set(shas))
    if not shas:
        return {}
    check = repo.git(
        ["cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
        input="".join(s + "\n" for s in shas).encode(),
    )
    small = []
    for line in check.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob" and int(parts[2]) <= MANIFEST_LIMIT:
            small.append(parts[0])
    return dict(git.blobs_starting_with(small, b"{", repo.top))


def _manifests(repo: Repo, found: dict[str, str]) -> list[Located]:
    """Parse the blobs ``found`` (blob sha -> where) that are manifests."""
    located = []
    for sha, data in _read_blobs(repo, found).items():
        if not looks_like_manifest(data):
            continue
        try:
            manifest = parse_if_manifest(data)
        except ManifestError:
            continue
        if manifest is not None:
            located.append(Located(found[sha], manifest))
    return located


def pushed(repo: Repo, remote: str, updates: str) -> list[Located]:
    """Manifests in commits a push sends: ``updates`` is the pre-push hook's standard input
    (``<local ref> <local sha> <remote ref> <remote sha>`` per line)."""
    tips, exclude = [], []
    for line in updates.splitlines():
        fields = line.split()
        if len(fields) != 4 or _is_zero(fields[1]):
            continue
        tips.append(fields[1])
        if (
            not _is_zero(fields[3])
            and repo.git(["cat-file", "-e", fields[3] + "^{commit}"], check=False).returncode == 0
        ):
            exclude.append(fields[3])
    if not tips:
        return []
    log = git.decode_path(
        repo.git(
            [
                "log",
                "--format=%x00%H",
                "--raw",
                "--no-abbrev",
                "--root",
                "-m",
                "--no-renames",
                *tips,
                "--not",
                f"--remotes={remote}",
                *exclude,
                "--",
            ]
        ).stdout
    )
    found: dict[str, str] = {}
    commit = ""
    for line in log.splitlines():
        if line.startswith("\0"):
            commit = line[1:]
        elif line.startswith(":"):
            meta, _, path = line.partition("\t")
            new_sha = meta.split()[3]
            if not _is_zero(new_sha):
                found.setdefault(new_sha, f"{path} in {commit[:10]}")
    return _manifests(repo, found)


def at_revisions(repo: Repo, revs: list[str]) -> list[Located]:
    """Manifests of the git-theta files in the trees of ``revs``."""
    found: dict[str, str] = {}
    for rev in revs:
        listing = git.decode_path(repo.git(["ls-tree", "-r", "-z", rev]).stdout)
        entries = [e for e in listing.split("\0") if e]
        paths = {e.split("\t", 1)[1]: e.split()[2] for e in entries if e.split()[1] == "blob"}
        for path in repo.theta_paths(paths):
            found.setdefault(paths[path], f"{path} at {rev}")
    return _manifests(repo, found)
