"""Sharing checkpoints through a remote: which objects a push needs, fetching what a
checkout needs, and rebuilding work-tree files from their manifests.

Everything here is derived from the manifests in the commits themselves, so it works for
commits made anywhere (clones, merges, rebases, cherry-picks) with no bookkeeping.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from git_theta.errors import GitError, ManifestError, ObjectMissingError, RemoteError
from git_theta.gitio import attributes, git, lfs
from git_theta.manifest import Manifest, looks_like_manifest, parse_if_manifest
from git_theta.store import ObjectStore


def _is_zero(sha: str) -> bool:
    """git's null object id (40 zeros, or 64 in a SHA-256 repository)."""
    return set(sha) == {"0"}


_MANIFEST_LIMIT = 64 << 20


@dataclass(frozen=True)
class Located:
    """A manifest found in git, with where it was found (for messages)."""

    where: str
    manifest: Manifest


def _read_blobs(shas: Iterable[str], cwd: Path | str) -> dict[str, bytes]:
    """Contents of the blobs among ``shas`` that could be manifests: small enough and
    starting with ``{``. Others are skipped as they stream by, so memory holds one at most."""
    shas = sorted(set(shas))
    if not shas:
        return {}
    check = git.run(
        ["cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
        cwd=cwd,
        input="".join(s + "\n" for s in shas).encode(),
    )
    small = []
    for line in check.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob" and int(parts[2]) <= _MANIFEST_LIMIT:
            small.append(parts[0])
    return dict(git.blobs_starting_with(small, b"{", cwd))


def _manifests(found: dict[str, str], cwd: Path | str) -> list[Located]:
    """Parse the blobs ``found`` (blob sha -> where) that are manifests."""
    located = []
    for sha, data in _read_blobs(found, cwd).items():
        if not looks_like_manifest(data):
            continue
        try:
            manifest = parse_if_manifest(data)
        except ManifestError:
            continue
        if manifest is not None:
            located.append(Located(found[sha], manifest))
    return located


def pushed_manifests(remote: str, updates: str, cwd: Path | str = ".") -> list[Located]:
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
            and git.run(
                ["cat-file", "-e", fields[3] + "^{commit}"], cwd=cwd, check=False
            ).returncode
            == 0
        ):
            exclude.append(fields[3])
    if not tips:
        return []
    log = git.run(
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
        ],
        cwd=cwd,
    ).stdout.decode("utf-8", "surrogateescape")
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
    return _manifests(found, cwd)


def revision_manifests(revs: list[str], cwd: Path | str = ".") -> list[Located]:
    """Manifests of the git-theta files in the trees of ``revs``."""
    found: dict[str, str] = {}
    for rev in revs:
        listing = git.run(["ls-tree", "-r", "-z", rev], cwd=cwd).stdout.decode(
            "utf-8", "surrogateescape"
        )
        entries = [e for e in listing.split("\0") if e]
        paths = {e.split("\t", 1)[1]: e.split()[2] for e in entries if e.split()[1] == "blob"}
        for path in attributes.theta_paths(sorted(paths), cwd):
            found.setdefault(paths[path], f"{path} at {rev}")
    return _manifests(found, cwd)


def _needed(located: list[Located]) -> dict[str, tuple[int, list[str]]]:
    needed: dict[str, tuple[int, list[str]]] = {}
    for item in located:
        for name, record in item.manifest.tensors.items():
            for obj in record.objects:
                size, names = needed.setdefault(obj.oid, (obj.size, []))
                names.append(f"{name} ({item.where})")
    return needed


def push_objects(remote: str, updates: str, cwd: Path | str = ".") -> int:
    """Upload every object the pushed commits' manifests need; returns how many were needed.

    Raises ObjectMissingError when one is not local, RemoteError when the upload fails.
    """
    store = ObjectStore(git.lfs_dir(cwd))
    needed = _needed(pushed_manifests(remote, updates, cwd))
    missing = {oid: names for oid, (_, names) in needed.items() if not store.has(oid)}
    if missing:
        raise ObjectMissingError(
            missing,
            f"it cannot be pushed to `{remote}`: run `git theta fetch` to get it, then push again",
        )
    try:
        lfs.push(remote, sorted(needed), cwd)
    except GitError as exc:
        names = [n for _, ns in needed.values() for n in ns]
        raise RemoteError(remote, lfs.remote_url(remote, cwd), "upload", names, exc) from exc
    return len(needed)


def fetch_missing(
    located: list[Located], store: ObjectStore, remote: str | None = None, cwd: Path | str = "."
) -> int:
    """Fetch, in one batch, the objects ``located`` need that are not local; returns how many.

    Raises RemoteError naming the remote and tensors when they cannot all be fetched.
    """
    needed = {oid: v for oid, v in _needed(located).items() if not store.has(oid)}
    if not needed:
        return 0
    remote = remote or lfs.default_remote(cwd)
    if not lfs.has_endpoint(remote, cwd):
        raise ObjectMissingError(
            {oid: names for oid, (_, names) in needed.items()},
            f"there is no remote `{remote}` (and no lfs.url) to fetch it from: add the remote "
            "the checkpoint came from (`git remote add origin URL`), then run `git theta checkout`",
        )
    reason: Exception | None = None
    try:
        lfs.fetch(remote, {oid: size for oid, (size, _) in needed.items()}, cwd)
    except GitError as exc:
        reason = exc
    still = {oid: v for oid, v in needed.items() if not store.has(oid)}
    if still:
        names = [n for _, ns in still.values() for n in ns]
        raise RemoteError(
            remote,
            lfs.remote_url(remote, cwd),
            "download",
            names,
            reason or Exception("the server does not have them"),
        )
    return len(needed)


def checkout(paths: list[str], cwd: Path | str = ".") -> list[str]:
    """Rebuild the work-tree files among ``paths`` (default: every git-theta file in the index)
    that hold a manifest or are missing; returns the paths rebuilt.

    A work-tree file that holds a checkpoint is never overwritten.
    """
    from git_theta import filter as theta_filter

    top = git.toplevel(cwd)
    index_file = Path(
        git.output(["rev-parse", "--path-format=absolute", "--git-path", "index"], cwd=top)
    )
    restore_rest = False
    if (
        not index_file.exists()
        and git.run(
            ["rev-parse", "-q", "--verify", "HEAD^{commit}"], cwd=top, check=False
        ).returncode
        == 0
    ):
        # a clone whose checkout failed leaves no index: rebuild it from HEAD, then write
        # the other files that checkout never wrote
        git.run(["read-tree", "HEAD"], cwd=top)
        restore_rest = True
    index = git.run(
        ["ls-files", "-z", "--cached", "--full-name", "--", *paths], cwd=cwd
    ).stdout.decode("utf-8", "surrogateescape")
    candidates = attributes.theta_paths(sorted({p for p in index.split("\0") if p}), top)
    repo = theta_filter.RepoFilter(top)
    todo: dict[str, Manifest] = {}
    as_indexed: list[str] = []  # rebuilt from exactly the manifest the index holds
    for path in candidates:
        file = top / path
        if file.exists():
            if file.stat().st_size > _MANIFEST_LIMIT:
                continue
            data = file.read_bytes()
        else:
            data = git.index_blob(path, top) or b""
        manifest = parse_if_manifest(data) if looks_like_manifest(data) else None
        if manifest is not None:
            todo[path] = manifest
            if data == git.index_blob(path, top):
                as_indexed.append(path)
    fetch_missing([Located(p, m) for p, m in todo.items()], repo.store, cwd=top)
    for path, manifest in todo.items():
        target = top / path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.theta-")
        try:
            with os.fdopen(fd, "wb") as out:
                theta_filter.smudge(manifest.to_bytes(), repo.store, out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if as_indexed:  # the index recorded the manifest's size: record the rebuilt file's stat
        git.run(["update-index", "-q", "--", *as_indexed], cwd=top)
    if restore_rest:
        git.run(["checkout-index", "-q", "-a"], cwd=top, check=False)
    if todo:
        git.run(["update-index", "-q", "--refresh"], cwd=top, check=False)
    return list(todo)
