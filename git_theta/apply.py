"""``git theta add PATH --update-type T --update-data F``: stage a checkpoint with updates
the user passes (low-rank factors, ia3 scales, a sparse difference).

The staged version of PATH is the base: each tensor the update data names becomes the
reconstruction (``updates.given``), stored as the update; every other tensor is taken from
the work-tree file as `git add` takes it. The work-tree file is rewritten to the result, so
`git status` stays clean, and the new manifest is staged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from git_theta import formats
from git_theta.checkout import rebuild
from git_theta.errors import ManifestError, UsageError
from git_theta.filter import clean, load_tensor
from git_theta.history import Located
from git_theta.manifest import Manifest, TensorRecord, parse_if_manifest
from git_theta.repo import Repo
from git_theta.transfer import fetch_missing
from git_theta.updates import given as given_lib


@dataclass(frozen=True)
class Applied:
    """What one update did: the path, the tensors updated and how many of their words the
    deterministic rebuild needed corrected."""

    path: str
    tensors: int
    corrected: int


def add_update(repo: Repo, pathspec: str, kind: str, data: Path) -> Applied:
    """Apply update data ``data`` of type ``kind`` to the staged version of ``pathspec`` (one
    tracked checkpoint, relative to where the repository was opened) and stage the result,
    rewriting the work-tree file to it."""
    entries = repo.index_entries([pathspec])
    paths = sorted({e.path for e in entries})
    if len(paths) != 1:
        raise UsageError(
            f"`{pathspec}` names {'no staged file' if not paths else 'several files'}: "
            "--update-data applies to one checkpoint that is already committed or staged "
            "(`git add` it first)"
        )
    path = paths[0]
    if any(e.stage for e in entries):
        raise UsageError(f"`{path}` has a merge conflict: resolve it first")
    if not repo.theta_paths([path]):
        raise UsageError(f"`{path}` is not tracked by git-theta (`git theta track {path}`)")
    entry = entries[0]
    staged = repo.git(["cat-file", "blob", entry.blob]).stdout
    try:
        old = parse_if_manifest(staged)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    if old is None:
        raise UsageError(f"{path}: the index holds it without git-theta (`git add --renormalize`)")
    src = repo.top / path
    if not src.is_file():
        raise UsageError(f"{path}: no such file in the work tree")
    checkpoint = formats.detect(src, path).read(src, path)
    shapes = {n: (t.dtype, tuple(t.shape)) for n, t in checkpoint.tensors.items()}
    given = given_lib.read(data, kind)  # its errors name the file
    try:
        updates = given_lib.fit(given, shapes)
    except given_lib.UpdateDataError as exc:
        raise given_lib.UpdateDataError(f"{data.name}: {exc}") from exc
    for name in updates:
        if name not in old.tensors:
            raise given_lib.UpdateDataError(
                f"{path}: tensor `{name}` has no staged version for the update to apply to"
            )
        record = old.tensors[name]
        if (record.dtype, tuple(record.shape)) != shapes[name]:
            raise given_lib.UpdateDataError(
                f"{path}: tensor `{name}` is {shapes[name][0]}{list(shapes[name][1])} in the "
                f"file but {record.dtype}{list(record.shape)} staged: stage the file first"
            )
    bases = Manifest(old.format, {n: old.tensors[n] for n in updates}, {})
    fetch_missing(repo, [Located(path, bases)])
    store, config = repo.store, repo.config
    records: dict[str, TensorRecord] = {}
    for name, update in updates.items():
        base = old.tensors[name]
        words = load_tensor(name, base, store)
        dtype_name, shape = shapes[name]
        try:
            records[name] = given_lib.build(
                name, dtype_name, shape, kind, update, base, words, store, config
            )
        except given_lib.UpdateDataError as exc:
            raise given_lib.UpdateDataError(f"{data.name}: {exc}") from exc
    manifest_bytes = clean(src, staged, store, config, path, overrides=records)
    manifest = Manifest.from_bytes(manifest_bytes)
    rebuild(repo, path, manifest)  # the work tree holds the reconstruction
    repo.stage(path, entry.mode, manifest_bytes)
    repo.git(["update-index", "-q", "--refresh"], check=False)  # the new file's stat data
    corrected = sum(getattr(r.storage, "corrected", 0) for r in records.values())
    return Applied(path, len(records), corrected)
