"""Moving objects between this repository and a remote: what a push must upload, fetching
what checkouts need. Objects travel through git-lfs (``gitio.lfs``), so every Git LFS host
and setting works.
"""

from __future__ import annotations

from git_theta.errors import GitError, ObjectMissingError, RemoteError
from git_theta.gitio import lfs
from git_theta.history import Located, at_revisions, pushed
from git_theta.repo import Repo
from git_theta.store import ObjectRef


def _needed(located: list[Located]) -> dict[str, tuple[int, list[str]]]:
    """oid -> (size, the tensors needing it, with where their manifest was found)."""
    needed: dict[str, tuple[int, list[str]]] = {}
    for item in located:
        for name, record in item.manifest.tensors.items():
            for obj in record.objects:
                size, names = needed.setdefault(obj.oid, (obj.size, []))
                names.append(f"{name} ({item.where})")
    return needed


def push_objects(repo: Repo, remote: str, updates: str) -> int:
    """Upload every object the pushed commits' manifests need (``updates``: the pre-push
    hook's standard input); returns how many were needed.

    Raises ObjectMissingError when one is not local, RemoteError when the upload fails.
    """
    needed = _needed(pushed(repo, remote, updates))
    store = repo.store
    missing = {
        oid: names
        for oid, (size, names) in needed.items()
        if not store.is_sound(ObjectRef(oid, size))
    }
    if missing:
        raise ObjectMissingError(
            missing,
            f"it cannot be pushed to `{remote}`: run `git theta fsck --fetch` to get a good "
            "copy (or `git add` the checkpoint again), then push again",
        )
    store.export_to_lfs(needed)  # git-lfs uploads from its own directory
    try:
        lfs.push(remote, sorted(needed), repo.top)
    except GitError as exc:
        names = [n for _, ns in needed.values() for n in ns]
        raise RemoteError(remote, lfs.remote_url(remote, repo.top), "upload", names, exc) from exc
    return len(needed)


def fetch_missing(repo: Repo, located: list[Located], remote: str | None = None) -> int:
    """Fetch, in one batch, the objects ``located`` need that are not local; returns how many.

    Raises RemoteError naming the remote and tensors when they cannot all be fetched.
    """
    store = repo.store
    needed = {oid: v for oid, v in _needed(located).items() if not store.has(oid)}
    if not needed:
        return 0
    remote = remote or lfs.default_remote(repo.top)
    if not lfs.has_endpoint(remote, repo.top):
        raise ObjectMissingError(
            {oid: names for oid, (_, names) in needed.items()},
            f"there is no remote `{remote}` (and no lfs.url) to fetch it from: add the remote "
            "the checkpoint came from (`git remote add origin URL`), then run `git theta checkout`",
        )
    reason: Exception | None = None
    try:
        lfs.fetch(remote, {oid: size for oid, (size, _) in needed.items()}, repo.top)
    except GitError as exc:
        reason = exc
    for oid, (size, _) in needed.items():
        store.accept_download(ObjectRef(oid, size))
    still = {oid: v for oid, v in needed.items() if not store.has(oid)}
    if still:
        names = [n for _, ns in still.values() for n in ns]
        raise RemoteError(
            remote,
            lfs.remote_url(remote, repo.top),
            "download",
            names,
            reason or Exception("the server does not have them"),
        )
    return len(needed)


def fetch_revisions(repo: Repo, remote: str | None, revs: list[str]) -> int:
    """Fetch the objects the git-theta files of ``revs`` (default HEAD) need; returns how
    many were downloaded."""
    return fetch_missing(repo, at_revisions(repo, revs or ["HEAD"]), remote)
