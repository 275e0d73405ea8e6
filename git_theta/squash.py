"""``git theta squash``: store the staged checkpoints' tensors whole again.

Each tensor of a staged manifest that is stored as a chain of updates is rebuilt (verified
by its identity hash) and stored dense; the new manifest is staged in its place. The tensors
and the work tree do not change, so the next commit records only the new storage; once no
kept commit needs the old chains, `git theta gc` can delete their objects.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from git_theta import updates
from git_theta.errors import ManifestError, UsageError
from git_theta.filter import load_tensor
from git_theta.history import Located
from git_theta.manifest import Delta, Manifest, TensorRecord, depth, parse_if_manifest
from git_theta.repo import Repo
from git_theta.transfer import fetch_missing


@dataclass(frozen=True)
class Squashed:
    """One staged checkpoint: how many tensors were rewritten dense, and the longest chain
    among them (0 and 0 when every tensor already was dense)."""

    path: str
    tensors: int
    deepest: int


def squash(repo: Repo, pathspecs: list[str]) -> list[Squashed]:
    """Rewrite dense every chained tensor of the staged checkpoints ``pathspecs`` match
    (relative to where the repository was opened; none: every tracked checkpoint), fetching
    the objects that are not local, and stage the new manifests."""
    entries = repo.index_entries(pathspecs or None)
    conflicted = sorted({e.path for e in entries if e.stage})
    if conflicted:
        raise UsageError(
            f"`{conflicted[0]}` has a merge conflict: resolve it (`git theta resolve`) first"
        )
    staged = {e.path: e for e in entries}
    paths = repo.theta_paths(staged)
    if not paths:
        what = " ".join(pathspecs) if pathspecs else "the index"
        raise UsageError(f"{what}: no checkpoint tracked by git-theta is staged there")
    results = []
    for path in paths:
        entry = staged[path]
        blob = repo.git(["cat-file", "blob", entry.blob]).stdout
        try:
            manifest = parse_if_manifest(blob)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        if manifest is None:
            raise UsageError(
                f"{path}: the index holds it without git-theta (run `git add --renormalize`)"
            )
        chained = {n: r for n, r in manifest.tensors.items() if isinstance(r.storage, Delta)}
        if not chained:
            results.append(Squashed(path, 0, 0))
            continue
        fetch_missing(repo, [Located(path, manifest)])
        dense = _dense(repo, chained)
        squashed = Manifest(
            manifest.format,
            {n: dense.get(n, r) for n, r in manifest.tensors.items()},
            manifest.aliases,
            manifest.version,
        )
        repo.stage(path, entry.mode, squashed.to_bytes())
        deepest = max(depth(r.storage) for r in chained.values())
        results.append(Squashed(path, len(chained), deepest))
    repo.git(["update-index", "-q", "--refresh"], check=False)  # the work tree's stat data
    return results


def _dense(repo: Repo, chained: dict[str, TensorRecord]) -> dict[str, TensorRecord]:
    """Each of ``chained`` rebuilt (and checked against its hash) and stored dense."""
    store, config = repo.store, repo.config

    def one(item: tuple[str, TensorRecord]) -> tuple[str, TensorRecord]:
        name, record = item
        words = load_tensor(name, record, store)
        dense = updates.store_tensor(
            record.dtype,
            record.shape,
            words,
            store,
            config,
            digest=record.hash,
            check=record.blake3,
        )
        return name, dense

    with ThreadPoolExecutor(max_workers=max(1, config.threads)) as pool:
        return dict(pool.map(one, chained.items()))
