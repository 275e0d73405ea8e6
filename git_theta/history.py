"""Manifests found in git: in the commits a push sends, in the trees of revisions, or in
everything the repository keeps. The history scanner (``gitio.scan``) says which blobs are
where; this module keeps the ones that are manifests.

Everything here is derived from the manifests in the commits themselves, so it works for
commits made anywhere (clones, merges, rebases, cherry-picks) with no bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from git_theta.errors import ManifestError
from git_theta.gitio import scan
from git_theta.manifest import Manifest, looks_like_manifest, parse_if_manifest
from git_theta.repo import Repo


@dataclass(frozen=True)
class Located:
    """A manifest found in git, with where it was found (for messages)."""

    where: str
    manifest: Manifest
    blob: str = ""  # its blob id, when it was found in history


def _manifests(
    blobs: Iterable[scan.Blob], damaged: list[tuple[str, str]] | None = None
) -> list[Located]:
    """The blobs that are manifests, parsed; damaged ones are left out (and listed in
    ``damaged`` as (where, what is wrong), when given)."""
    located = []
    for found in blobs:
        if not looks_like_manifest(found.data):
            continue
        try:
            manifest = parse_if_manifest(found.data)
        except ManifestError as exc:
            if damaged is not None:
                damaged.append((found.where, str(exc)))
            continue
        if manifest is not None:
            located.append(Located(found.where, manifest, found.blob))
    return located


def pushed(repo: Repo, remote: str, updates: str) -> list[Located]:
    """Manifests in commits a push sends: ``updates`` is the pre-push hook's standard input
    (``<local ref> <local sha> <remote ref> <remote sha>`` per line).

    Manifests at any path count, not only at paths git-theta's attributes name today: a
    commit made under other attributes must not reach the remote without its objects.
    """
    tips, exclude = [], []
    for line in updates.splitlines():
        fields = line.split()
        if len(fields) != 4 or scan.is_null(fields[1]):
            continue
        tips.append(fields[1])
        remote_sha = fields[3]
        if not scan.is_null(remote_sha) and _is_commit(repo, remote_sha):
            exclude.append(remote_sha)
    return _manifests(scan.scan_range(repo.top, tips, exclude, remote, theta_only=False))


def _is_commit(repo: Repo, sha: str) -> bool:
    return repo.git(["cat-file", "-e", sha + "^{commit}"], check=False).returncode == 0


def at_revisions(repo: Repo, revs: list[str]) -> list[Located]:
    """Manifests of the git-theta files in the trees of ``revs``."""
    return _manifests(scan.scan_trees(repo.top, revs))


def current(repo: Repo, damaged: list[tuple[str, str]] | None = None) -> list[Located]:
    """Manifests at any path in HEAD's tree and in this work tree's index (each blob once,
    named by the commit when HEAD has it); damaged ones go to ``damaged``."""
    blobs: list[scan.Blob] = []
    head = repo.git(["rev-parse", "-q", "--verify", "HEAD^{commit}"], check=False)
    if head.returncode == 0:
        commit = head.stdout.decode().strip()
        blobs = list(scan.scan_trees(repo.top, [commit], theta_only=False))
    seen = {found.blob for found in blobs}
    blobs += [b for b in scan.scan_index(repo.top, theta_only=False) if b.blob not in seen]
    return _manifests(blobs, damaged)


def everything(
    repo: Repo, theta_only: bool = False, damaged: list[tuple[str, str]] | None = None
) -> list[Located]:
    """Every manifest anything in the repository keeps: refs, reflogs, stashes, the index of
    every worktree (see ``gitio.scan.scan_all``); damaged ones go to ``damaged``."""
    return _manifests(scan.scan_all(repo.top, theta_only=theta_only), damaged)
