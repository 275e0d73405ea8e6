"""Updates from data the user passes: ``git theta add PATH --update-type T --update-data F``.

``F`` is a torch or safetensors file, read by git-theta's own readers (loading it runs no
code), in the layout git-theta 0.2 used, one group per tensor of the checkpoint:

- ``low-rank``: ``<tensor>/R`` [rows, rank] and ``<tensor>/C`` [rank, columns], the tensor
  read as a matrix [first dimension, the rest]: new = old + R @ C;
- ``ia3``: ``<tensor>/ia3``, broadcast against the tensor: new = old * s;
- ``sparse``: ``<tensor>/data``, ``<tensor>/indices`` and ``<tensor>/indptr`` (and, if
  present, ``<tensor>/shape``): a CSR matrix of the flattened difference: new = old + S.

or a PEFT LoRA adapter (``low-rank``): its directory, or its ``adapter_model.safetensors``
beside its ``adapter_config.json``: ``lora_B`` is R, ``lora_A`` is C, the scale is
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), and each module name is
mapped onto the checkpoint's ``<module>.weight``.

The new tensor is what numpy computes on this machine (in float32, or float64 when the
tensor or the factors are float64; the matrix product through BLAS; rounded once to the
tensor's dtype). A low-rank or ia3 record keeps the factors and a correction against the
deterministic rebuild (``rebuild``), so every machine rebuilds those bits; a sparse
difference is stored as the words that changed (``Sparse``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from git_theta import formats
from git_theta.config import Config
from git_theta.errors import ThetaError, UsageError
from git_theta.manifest import Ia3, LowRank, TensorRecord, depth
from git_theta.methods import float_type
from git_theta.store import ObjectRef, ObjectStore
from git_theta.tensors import as_words, content_hash, crc32, identity_hash, numel, word_dtype
from git_theta.updates import (
    rebuild,
    sparse_index_dtype,
    start_encode,
    store_encoding,
    store_tensor,
)

KINDS = ("low-rank", "ia3", "sparse")
_PARTS = {"low-rank": ("R", "C"), "ia3": ("ia3",), "sparse": ("data", "indices", "indptr")}
_OPTIONAL = {"sparse": ("shape",)}


@dataclass(frozen=True)
class Array:
    """One array of update data: its dtype name and its values (numpy, shaped)."""

    dtype: str
    values: np.ndarray


@dataclass(frozen=True)
class Given:
    """One tensor's update: its parts (``R`` and ``C``; ``ia3``; ``data``, ``indices``,
    ``indptr``) and the low-rank scale."""

    parts: dict[str, Array]
    scale: float = 1.0


class UpdateDataError(ThetaError):
    """Update data that cannot be read or does not fit the checkpoint."""

    exit_code = 2


def read(path: Path, kind: str) -> dict[str, Given]:
    """The updates ``path`` holds, by the name of the tensor each applies to (PEFT module
    names are mapped later, by ``fit``)."""
    if kind not in KINDS:
        raise UsageError(f"update type `{kind}` takes no update data (use {', '.join(KINDS)})")
    config_path = (
        path / "adapter_config.json" if path.is_dir() else path.parent / "adapter_config.json"
    )
    if config_path.is_file() and (path.is_dir() or path.name.startswith("adapter_model")):
        if kind != "low-rank":
            raise UpdateDataError(f"{path}: a PEFT LoRA adapter is a low-rank update, not {kind}")
        return _peft(path if path.is_dir() else path.parent, config_path)
    if not path.is_file():
        raise UpdateDataError(f"{path}: no such file or adapter directory")
    groups: dict[str, dict[str, Array]] = {}
    for name, array in _arrays(path).items():
        tensor, _, part = name.rpartition("/")
        if tensor and part in _PARTS[kind] + _OPTIONAL.get(kind, ()):
            groups.setdefault(tensor, {})[part] = array
    if not groups:
        raise UpdateDataError(
            f"{path}: holds no {kind} update (expected "
            + ", ".join(f"`<tensor>/{p}`" for p in _PARTS[kind])
            + ")"
        )
    for tensor, parts in groups.items():
        missing = [p for p in _PARTS[kind] if p not in parts]
        if missing:
            raise UpdateDataError(f"{path}: `{tensor}` has no `{tensor}/{missing[0]}`")
    return {tensor: Given(parts) for tensor, parts in groups.items()}


def _arrays(path: Path) -> dict[str, Array]:
    """Every tensor of a torch or safetensors file, as numpy values."""
    fmt = formats.detect(path, str(path))
    if fmt.name not in ("pytorch", "safetensors"):
        raise UpdateDataError(f"{path}: update data must be a torch or safetensors file")
    checkpoint = fmt.read(path, str(path))
    found = {}
    for name, tensor in checkpoint.tensors.items():
        words = as_words(tensor.load(), tensor.dtype)
        kind = float_type(tensor.dtype)
        typed: np.ndarray
        if kind is not None:
            typed = words.view(kind)
        elif tensor.dtype.startswith(("int", "uint")):
            typed = words.view(np.dtype(tensor.dtype).newbyteorder("<"))
        else:
            continue  # bool, complex: no update layout uses them
        unescaped = name.replace("~1", "/").replace("~0", "~")
        found[unescaped] = Array(tensor.dtype, typed.reshape(tensor.shape))
    return found


_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.\w+)?\.weight$"
)


def _peft(folder: Path, config_path: Path) -> dict[str, Given]:
    """A PEFT LoRA adapter's factors by module name, with its scale."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        rank, alpha = config["r"], config.get("lora_alpha", config["r"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UpdateDataError(f"{config_path}: not a LoRA adapter config ({exc})") from exc
    if (
        isinstance(rank, bool)
        or not isinstance(rank, int)
        or rank < 1
        or isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
    ):
        raise UpdateDataError(f"{config_path}: `r` and `lora_alpha` must be numbers")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UpdateDataError(
            f"{config_path}: per-module ranks or alphas (rank_pattern, alpha_pattern) are not "
            "supported: merge the adapter with PEFT and `git add` the result"
        )
    try:
        scale = float(alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank)
    except OverflowError:
        scale = math.inf
    if not math.isfinite(scale):
        raise UpdateDataError(f"{config_path}: `lora_alpha` / `r` is not a finite number")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        weights = folder / "adapter_model.bin"
    if not weights.is_file():
        raise UpdateDataError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")
    modules: dict[str, dict[str, Array]] = {}
    for name, array in _arrays(weights).items():
        match = _LORA_KEY.match(name)
        if match:
            modules.setdefault(match["module"], {})[match["ab"]] = array
    if not modules:
        raise UpdateDataError(f"{weights}: holds no `lora_A` / `lora_B` weights")
    given = {}
    for module, pair in modules.items():
        if set(pair) != {"A", "B"}:
            raise UpdateDataError(f"{weights}: module `{module}` lacks lora_A or lora_B")
        a, b = pair["A"], pair["B"]
        if config.get("fan_in_fan_out"):  # the layer computes x @ W: W's update is (B @ A).T
            r, c = Array(a.dtype, a.values.T), Array(b.dtype, b.values.T)
        else:
            r, c = b, a
        given[module] = Given({"R": r, "C": c}, scale)
    return given


def fit(
    given: dict[str, Given], tensors: dict[str, tuple[str, tuple[int, ...]]]
) -> dict[str, Given]:
    """``given`` keyed by the checkpoint's tensor names (``tensors``: name -> dtype, shape):
    a name of the checkpoint stays; a PEFT module name becomes ``<module>.weight``, or the one
    tensor whose name ends with it (or that it ends with). Raises UpdateDataError for an update
    that names no tensor, or several."""
    fitted = {}
    for name, update in given.items():
        if name in tensors:
            fitted[name] = update
            continue
        weight = f"{name}.weight"
        candidates = (
            [weight]
            if weight in tensors
            else [t for t in tensors if t.endswith("." + weight) or weight.endswith("." + t)]
        )
        if len(candidates) != 1:
            found = "none" if not candidates else ", ".join(f"`{c}`" for c in candidates[:3])
            raise UpdateDataError(
                f"update for `{name}` fits no single tensor of the checkpoint (found {found})"
            )
        fitted[candidates[0]] = update
    return fitted


def build(
    name: str,
    dtype_name: str,
    shape: tuple[int, ...],
    kind: str,
    update: Given,
    base: TensorRecord,
    base_words: np.ndarray,
    store: ObjectStore,
    config: Config,
) -> TensorRecord:
    """Store the update ``update`` of tensor ``name`` (whose previous version is ``base``,
    with words ``base_words``); returns the new record, whose identity hash is the
    reconstruction's. Raises UpdateDataError when the update does not fit the tensor."""
    kind_of = float_type(dtype_name)
    if kind == "sparse":
        new = _sparse(name, dtype_name, shape, update, base_words)
        if np.array_equal(new, base_words):
            return base  # the difference changes nothing
        sparse = dataclasses.replace(config, update_type="sparse")
        return store_tensor(dtype_name, shape, new, store, sparse, base=base)
    if kind_of is None:
        raise UpdateDataError(f"`{name}` is {dtype_name}: {kind} updates need floating point")
    parts = update.parts
    factor_types = {a.dtype for a in parts.values()}
    if len(factor_types) != 1 or float_type(next(iter(factor_types))) is None:
        raise UpdateDataError(
            f"update of `{name}`: its factors must share one floating-point dtype"
        )
    factors = next(iter(factor_types))
    ct = rebuild.compute_type(dtype_name, factors)
    old: np.ndarray = base_words.view(kind_of).reshape(shape)
    new_values: np.ndarray
    if kind == "low-rank":
        r, c = parts["R"].values, parts["C"].values
        if len(shape) < 2:
            raise UpdateDataError(f"`{name}` has {len(shape)} dimensions: low-rank needs 2 or more")
        rows, cols = rebuild.matrix_shape(shape)
        if r.ndim == 2 and not 1 <= r.shape[1] <= 1 << 20:
            raise UpdateDataError(f"update of `{name}`: rank {r.shape[1]} (1 to 2**20 supported)")
        if r.ndim != 2 or c.ndim != 2 or r.shape[0] != rows or c.shape != (r.shape[1], cols):
            raise UpdateDataError(
                f"update of `{name}` {list(shape)}: R {list(r.shape)} @ C {list(c.shape)} does "
                f"not give [{rows}, {cols}]"
            )
        product: np.ndarray = r.astype(ct) @ c.astype(ct)
        if update.scale != 1.0:
            product = product * ct(update.scale)
        new_values = (old.reshape(rows, cols).astype(ct) + product).astype(kind_of)
        rebuilt = rebuild.low_rank(base_words, dtype_name, shape, r, c, update.scale)
        own = [r, c]
    else:
        s = parts["ia3"].values
        if not rebuild.broadcasts(tuple(s.shape), tuple(shape)):
            raise UpdateDataError(
                f"update of `{name}` {list(shape)}: ia3 scale {list(s.shape)} does not "
                "broadcast to it"
            )
        new_values = (old.astype(ct) * s.astype(ct)).astype(kind_of)
        rebuilt = rebuild.ia3(base_words, dtype_name, shape, s)
        own = [s]
    new = np.ascontiguousarray(new_values).reshape(-1).view(base_words.dtype)
    digest = identity_hash(dtype_name, shape, new)
    if depth(base.storage) >= config.max_chain_depth:  # the chain is long enough: whole
        return store_tensor(dtype_name, shape, new, store, config, digest)
    word = word_dtype(np.dtype(float_type(factors)).itemsize)
    refs: list[ObjectRef] = [
        store_encoding(
            start_encode(np.ascontiguousarray(a).reshape(-1).view(word), config, factors),
            store,
            config,
        )
        for a in own
    ]
    wrong = np.flatnonzero(rebuilt != new)
    if wrong.size:
        gaps = rebuild.gaps_of(wrong, sparse_index_dtype(new.size))
        refs.append(store_encoding(start_encode(gaps, config, "uint64"), store, config))
        values = np.ascontiguousarray(new[wrong])
        refs.append(store_encoding(start_encode(values, config, dtype_name), store, config))
    storage: LowRank | Ia3
    if kind == "low-rank":
        storage = LowRank(
            tuple(refs),
            base.hash,
            base.storage,
            factors,
            int(wrong.size),
            rank=int(own[0].shape[1]),
            scale=update.scale,
        )
    else:
        storage = Ia3(
            tuple(refs),
            base.hash,
            base.storage,
            factors,
            int(wrong.size),
            scale_shape=tuple(own[0].shape),
        )
    check = content_hash(dtype_name, shape, new)
    return TensorRecord(dtype_name, tuple(shape), digest, storage, crc32(new), check)


def _sparse(
    name: str, dtype_name: str, shape: tuple[int, ...], update: Given, base_words: np.ndarray
) -> np.ndarray:
    """The words of old + S, S a CSR matrix of the flattened difference."""
    parts = update.parts
    data, indices, indptr = (parts[p].values.reshape(-1) for p in ("data", "indices", "indptr"))
    count = numel(shape)
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise UpdateDataError(f"update of `{name}`: indices and indptr must be integers")
    rows = indptr.size - 1
    if "shape" in parts:
        if parts["shape"].values.dtype.kind not in "iu":
            raise UpdateDataError(f"update of `{name}`: its CSR shape must be integers")
        declared = [int(d) for d in parts["shape"].values.reshape(-1)]
        if len(declared) != 2 or declared[0] != rows or declared[0] * declared[1] != count:
            raise UpdateDataError(
                f"update of `{name}` {list(shape)}: its CSR shape {declared} is not the "
                f"flattened tensor's"
            )
    if rows < 1 or count % rows:
        raise UpdateDataError(f"update of `{name}`: indptr has {indptr.size} entries")
    cols = count // rows
    starts = indptr.astype(np.int64)
    if (
        starts[0] != 0
        or starts[-1] != data.size
        or indices.size != data.size
        or (np.diff(starts) < 0).any()
        or (indices.size and (indices.min() < 0 or indices.max() >= cols))
    ):
        raise UpdateDataError(f"update of `{name}`: its CSR indices or indptr are out of range")
    kind = float_type(dtype_name)
    numbers = kind if kind is not None else np.dtype(dtype_name).newbyteorder("<")
    old = base_words.view(numbers)
    row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(starts))
    flat = row_of * cols + indices.astype(np.int64)
    ct = rebuild.compute_type(dtype_name, parts["data"].dtype) if kind is not None else old.dtype
    total = np.zeros(count, dtype=ct)
    np.add.at(total, flat, data.astype(ct))
    touched = np.unique(flat)
    new = old.copy()
    new[touched] = (old[touched].astype(ct) + total[touched]).astype(numbers)
    return new.view(base_words.dtype)
