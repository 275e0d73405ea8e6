"""``git theta checkout``: rebuild work-tree checkpoints whose file holds a manifest (a clone
made without git-theta, or with ``GIT_THETA_SKIP_SMUDGE``) or is missing."""

from __future__ import annotations

import os
import tempfile

from git_theta import filter as theta_filter
from git_theta.errors import FileError, ThetaError, UsageError
from git_theta.history import Located
from git_theta.manifest import MAX_MANIFEST_BYTES, Manifest, looks_like_manifest, parse_if_manifest
from git_theta.repo import Repo
from git_theta.transfer import fetch_missing


def checkout(repo: Repo, paths: list[str]) -> list[str]:
    """Rebuild the work-tree files among ``paths`` (relative to where the repository was
    opened; default: every git-theta file in the index) that hold a manifest or are missing;
    returns the paths rebuilt (relative to the top).

    Fetches what they need in one batch first. A work-tree file that holds a checkpoint is
    never overwritten; files outside the sparse-checkout are not written. Raises UsageError,
    having written nothing, where git-theta's filter is not configured: git would then
    stage the rebuilt checkpoints whole.
    """
    if not repo.filter_installed:
        raise UsageError(
            "git-theta's filter is not configured for this repository, so git would store "
            "rebuilt checkpoints whole: run `git theta install` first (`--local` for this "
            "repository only), then `git theta checkout`"
        )
    top = repo.top
    restore_rest = False
    if (
        not (repo.git_dir / "index").exists()
        and repo.git(["rev-parse", "-q", "--verify", "HEAD^{commit}"], check=False).returncode == 0
    ):
        # a clone whose checkout failed leaves no index: rebuild it from HEAD, then write
        # the other files that checkout never wrote
        repo.git(["read-tree", "HEAD"])
        restore_rest = True
    indexed = {e.path for e in repo.index_entries(paths) if e.stage == 0 and not e.skip_worktree}
    candidates = repo.theta_paths(indexed)
    todo: dict[str, Manifest] = {}
    as_indexed: list[str] = []  # rebuilt from exactly the manifest the index holds
    for path in candidates:
        file = top / path
        if file.exists():
            if file.stat().st_size > MAX_MANIFEST_BYTES:
                continue
            data = file.read_bytes()
        else:
            data = repo.index_blob(path) or b""
        manifest = parse_if_manifest(data) if looks_like_manifest(data) else None
        if manifest is not None:
            todo[path] = manifest
            if data == repo.index_blob(path):
                as_indexed.append(path)
    fetch_missing(repo, [Located(p, m) for p, m in todo.items()])
    for path, manifest in todo.items():
        rebuild(repo, path, manifest)
    if as_indexed:  # the index recorded the manifest's size: record the rebuilt file's stat
        repo.git(["update-index", "-q", "--", *as_indexed])
    if restore_rest:
        repo.git(["checkout-index", "-q", "-a"], check=False)
    if todo:
        repo.git(["update-index", "-q", "--refresh"], check=False)
    return list(todo)


def rebuild(repo: Repo, path: str, manifest: Manifest) -> None:
    """Write the checkpoint of ``manifest`` to ``path`` atomically (temporary file, rename)."""
    target = repo.top / path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.theta-")
    try:
        with os.fdopen(fd, "wb") as out:
            theta_filter.smudge(manifest, repo.store, out, repo.config)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, ThetaError) and not str(exc).startswith(f"{path}: "):
            raise FileError(path, exc) from exc  # one line naming the file, as git's filter
        raise
