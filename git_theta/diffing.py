"""What changed inside a checkpoint, between two manifests: tensors added, removed and
modified (with the fraction of entries that changed and the L2 norm of the difference) and
non-tensor values changed.

Only the objects of modified tensors are read, fetched in one batch when missing; the
figures are computed a piece at a time (memory holds one piece of each version), one tensor
per thread. When the objects cannot be had, names, dtypes and shapes are still reported,
with the reason the figures are missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from git_theta import codec, methods, updates
from git_theta.errors import ThetaError
from git_theta.history import Located
from git_theta.manifest import Manifest, TensorRecord
from git_theta.repo import Repo
from git_theta.tensors import dtype as get_dtype
from git_theta.tensors import numel, word_dtype
from git_theta.threeway import is_pair_node, show_value

PIECE_ENTRIES = 1 << 20  # entries of each version read at a time (16 MiB as float64 pairs)
FIGURE_THREADS = 4  # tensors whose figures are computed at once (memory: pieces in flight)


@dataclass(frozen=True)
class TensorChange:
    """One tensor added, removed or modified."""

    name: str
    status: str  # "added", "removed" or "modified"
    old: tuple[str, tuple[int, ...]] | None  # dtype and shape
    new: tuple[str, tuple[int, ...]] | None
    entries: int = 0  # entries compared (a modified tensor of unchanged dtype and shape)
    changed: int | None = None  # entries whose bits differ
    l2: float | None = None  # L2 norm of new - old
    old_l2: float | None = None  # L2 norm of old

    @property
    def relative(self) -> float | None:
        if self.l2 is None or not self.old_l2:
            return None
        return self.l2 / self.old_l2

    @property
    def bytes_changed(self) -> int:
        """Bytes of the tensor that changed: all of an added or removed tensor, the changed
        entries of a modified one (all of it when unknown, or its dtype or shape changed)."""
        kind, shape = self.new or self.old  # type: ignore[misc]
        itemsize = get_dtype(kind).itemsize
        if self.status == "modified" and self.changed is not None:
            return self.changed * itemsize
        return numel(shape) * itemsize


@dataclass(frozen=True)
class ValueChange:
    """A non-tensor value changed, added or removed (``old``/``new``: shown as text)."""

    path: str
    old: str
    new: str


@dataclass
class FileDiff:
    """What changed in one checkpoint."""

    path: str
    tensors: list[TensorChange] = field(default_factory=list)
    values: list[ValueChange] = field(default_factory=list)
    missing: str = ""  # why the figures of modified tensors are missing
    old_path: str = ""  # the old name, when it was renamed
    unmerged: bool = False  # in conflict: its versions are the merge's stages
    problem: str = ""  # why the versions could not be compared at all

    @property
    def empty(self) -> bool:
        return not (self.tensors or self.values or self.unmerged or self.problem)

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    @property
    def bytes_changed(self) -> int:
        return sum(t.bytes_changed for t in self.tensors)


def _shape(record: TensorRecord) -> tuple[str, tuple[int, ...]]:
    return record.dtype, tuple(record.shape)


def compare(
    repo: Repo | None,
    path: str,
    old: Manifest | None,
    new: Manifest | None,
    figures: bool = True,
) -> FileDiff:
    """What changed from ``old`` to ``new`` (None: the file is absent on that side); with
    ``figures`` (and a repository to read objects from), the statistics of modified
    tensors."""
    diff = FileDiff(path)
    old_tensors = old.tensors if old else {}
    new_tensors = new.tensors if new else {}
    modified: list[tuple[str, TensorRecord, TensorRecord]] = []
    for name in sorted({*old_tensors, *new_tensors}):
        before, after = old_tensors.get(name), new_tensors.get(name)
        if before is None and after is not None:
            diff.tensors.append(TensorChange(name, "added", None, _shape(after)))
        elif after is None and before is not None:
            diff.tensors.append(TensorChange(name, "removed", _shape(before), None))
        elif before is not None and after is not None:
            if before.same_tensor(after):
                continue
            modified.append((name, before, after))
    diff.values = value_changes(old.format if old else None, new.format if new else None)
    stats: dict[str, TensorChange] = {}
    comparable = [m for m in modified if _shape(m[1]) == _shape(m[2])]
    if figures and repo is not None and comparable:
        try:
            needed = Manifest(
                {"name": "diff"},
                {f"{n} ({side})": r for n, a, b in comparable for side, r in (("a", a), ("b", b))},
            )
            from git_theta.transfer import fetch_missing

            fetch_missing(repo, [Located(path, needed)])
            threads = max(1, min(repo.config.threads, FIGURE_THREADS))
            with ThreadPoolExecutor(max_workers=threads) as pool:
                found = pool.map(lambda m: _figures(repo, *m), comparable)
                stats = {change.name: change for change in found}
        except ThetaError as exc:
            diff.missing = str(exc)
            stats = {}
    elif comparable and not figures:
        diff.missing = "not computed"
    for name, before, after in modified:
        diff.tensors.append(
            stats.get(name)
            or TensorChange(name, "modified", _shape(before), _shape(after), numel(after.shape))
        )
    diff.tensors.sort(key=lambda t: t.name)
    return diff


def _value_view(dtype_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """How to read a tensor's words as numbers (float64, or complex128)."""
    kind = methods.float_type(dtype_name)
    if kind is not None:
        return lambda words: words.view(kind).astype(np.float64)
    if dtype_name.startswith("complex"):
        complex_kind = np.complex64 if dtype_name == "complex64" else np.complex128
        return lambda words: words.view(complex_kind).astype(np.complex128)
    if dtype_name == "bool":
        return lambda words: words.astype(np.float64)
    numbers = np.dtype(dtype_name)
    return lambda words: words.view(numbers).astype(np.float64)


def _difference(dtype_name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b - a`` as float64 (complex128): 64-bit integers are subtracted in two exact
    halves, so large values keep their small differences."""
    if dtype_name in ("int64", "uint64"):
        signed = dtype_name == "int64"
        x, y = (w.view(np.int64) if signed else w for w in (a, b))
        high = (y >> 32).astype(np.int64) - (x >> 32).astype(np.int64)
        low = (y & 0xFFFFFFFF).astype(np.int64) - (x & 0xFFFFFFFF).astype(np.int64)
        return high.astype(np.float64) * 4294967296.0 + low.astype(np.float64)
    values = _value_view(dtype_name)
    return values(b) - values(a)


def _figures(repo: Repo, name: str, old: TensorRecord, new: TensorRecord) -> TensorChange:
    """The statistics of a modified tensor of unchanged dtype and shape."""
    itemsize = get_dtype(old.dtype).itemsize
    word = word_dtype(itemsize)
    per_entry = itemsize // word.itemsize  # words per entry (2 for complex128)
    count = numel(old.shape) * per_entry
    piece = PIECE_ENTRIES * per_entry
    values = _value_view(old.dtype)
    changed, diff_sq, old_sq = 0, 0.0, 0.0
    store = repo.store
    for obj in (*old.objects, *new.objects):
        store.verify(obj.oid)  # whole, before any figure is computed from it
    pieces_old = _pieces(repo, old, word, count, piece)
    pieces_new = _pieces(repo, new, word, count, piece)
    with np.errstate(invalid="ignore", over="ignore"):
        for a, b in zip(pieces_old, pieces_new, strict=True):
            differs = (a != b).reshape(-1, per_entry).any(axis=1)
            changed += int(np.count_nonzero(differs))
            delta = _difference(old.dtype, a, b)
            delta[~differs] = 0  # equal bits: no difference, NaN and inf included
            diff_sq += float(np.vdot(delta, delta).real)
            del delta
            before = values(a)
            old_sq += float(np.vdot(before, before).real)
    return TensorChange(
        name,
        "modified",
        _shape(old),
        _shape(new),
        numel(old.shape),
        changed,
        float(np.sqrt(diff_sq)),
        float(np.sqrt(old_sq)),
    )


def _pieces(repo: Repo, record: TensorRecord, word: np.dtype, count: int, piece: int) -> Any:
    """The tensor's words, ``piece`` at a time: a dense tensor is read from its object a
    piece at a time; a chain of updates is rebuilt whole first."""
    from git_theta.manifest import Dense

    storage = record.storage
    if isinstance(storage, Dense):
        return codec.decode_pieces(repo.store.path(storage.object.oid), word, count, piece)
    words = updates.decode(record, repo.store)
    return (words[start : start + piece] for start in range(0, count, piece))


# ----------------------------------------------------------------------------- values


def value_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[ValueChange]:
    """Non-tensor values that differ between two manifests' ``format`` trees."""
    if old is None or new is None:
        return []
    if old.get("name") != new.get("name"):
        return [ValueChange("format", str(old.get("name")), str(new.get("name")))]
    changes: list[ValueChange] = []
    if old.get("name") == "safetensors":
        _walk(_metadata(old), _metadata(new), [], changes)
    else:
        _walk(old.get("root"), new.get("root"), [], changes)
    return changes


def _metadata(fmt: dict[str, Any]) -> dict[str, Any]:
    """A safetensors header's ``__metadata__``."""
    try:
        header = json.loads(fmt.get("header", "{}"))
    except (TypeError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


_ABSENT: Any = object()


def _is_tensor_node(value: Any) -> bool:
    return isinstance(value, dict) and ("tensor" in value or "parameter" in value)


def _walk(old: Any, new: Any, path: list[str], changes: list[ValueChange]) -> None:
    if old == new:
        return
    if _is_tensor_node(old) or _is_tensor_node(new):
        return  # the tensors' own lines say it
    if is_pair_node(old) and is_pair_node(new) and set(old) == set(new):
        for kind in old:
            a = {json.dumps(k, sort_keys=True): (k, v) for k, v in old[kind]}
            b = {json.dumps(k, sort_keys=True): (k, v) for k, v in new[kind]}
            for ident in dict.fromkeys([*a, *b]):
                key = (a.get(ident) or b[ident])[0]
                label = key if isinstance(key, str) else show_value(key)
                where = [*path, label] if kind != "attrs" else [*path, "(attributes)", label]
                _walk(
                    a.get(ident, (None, _ABSENT))[1],
                    b.get(ident, (None, _ABSENT))[1],
                    where,
                    changes,
                )
        return
    if (
        isinstance(old, dict)
        and isinstance(new, dict)
        and not (len(old) == 1 and len(new) == 1 and set(old) != set(new))
        and (len(old) > 1 or len(new) > 1 or not path)
    ):
        for key in dict.fromkeys([*old, *new]):
            _walk(old.get(key, _ABSENT), new.get(key, _ABSENT), [*path, key], changes)
        return
    changes.append(ValueChange("/".join(path) or "(root)", _text(old), _text(new)))


def _text(value: Any) -> str:
    return "(absent)" if value is _ABSENT else show_value(value)


def values_of(fmt: dict[str, Any]) -> list[tuple[str, str]]:
    """Every non-tensor value of a ``format`` tree, as (path, value shown as text)."""
    found: list[tuple[str, str]] = []
    if fmt.get("name") == "safetensors":
        return [(str(k), show_value(v)) for k, v in sorted(_metadata(fmt).items())]
    _flatten(fmt.get("root"), [], found)
    return found


def _flatten(node: Any, path: list[str], found: list[tuple[str, str]]) -> None:
    if _is_tensor_node(node):
        return
    if is_pair_node(node):
        for kind, pairs in node.items():
            for key, value in pairs:
                label = key if isinstance(key, str) else show_value(key)
                where = [*path, label] if kind != "attrs" else [*path, "(attributes)", label]
                _flatten(value, where, found)
        return
    if isinstance(node, dict) and len(node) > 1:
        for key, value in node.items():
            _flatten(value, [*path, key], found)
        return
    found.append(("/".join(path) or "(root)", show_value(node)))
