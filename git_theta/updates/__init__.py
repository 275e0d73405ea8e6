"""Update encodings: how a tensor's record is turned into objects and back.

One function per direction, dispatched on the record's type (``manifest.Storage``), so a new
encoding adds a record type and its branches here and leaves ``filter.py`` alone:

- ``dense``: the whole tensor in one object.
- ``xor``: the tensor's words XOR its base's words, in one object: bit-exact for any change,
  and small when the change is (a fine-tune step keeps most sign and exponent bits).
- ``sparse``: the positions and new values of the words that differ from the base's.

A delta's base is the tensor of the same name in the manifest being replaced; its record
carries the base's chain (``manifest.Delta``), at most ``theta.maxChainDepth`` updates long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta import codec
from git_theta.config import Config
from git_theta.errors import CorruptObjectError, ManifestError, ThetaError
from git_theta.manifest import (
    Delta,
    Dense,
    Ia3,
    LowRank,
    Sparse,
    Storage,
    TensorRecord,
    Xor,
    chain,
    depth,
)
from git_theta.store import ObjectRef, ObjectStore
from git_theta.tensors import (
    content_hash,
    crc32,
    identity_hash,
    numel,
    word_dtype,
    word_size,
)
from git_theta.tensors import dtype as get_dtype
from git_theta.updates import rebuild

# ``auto``: zstd only for floats this big (below, lz4 is as small), and only when it saves
# this fraction over storing the bytes (else lz4, which decodes faster)
ZSTD_MIN_BYTES = 4096
ZSTD_MAX_RATIO = 0.98
_FLOATS = frozenset({"float64", "float32", "float16", "bfloat16", "complex64", "complex128"})
# ``auto`` stores a delta only when it is at most this fraction of the dense tensor's size,
# and does not encode the dense tensor when a delta is at most the second fraction of the
# dense copy its chain starts from
DELTA_MAX_RATIO = 0.8
DELTA_SURE_RATIO = 0.5
# ``auto`` ends a chain (stores the tensor whole) when its updates would hold more than this
# fraction of the dense copy they start from: a checkout then reads at most about twice the
# tensor's dense size (8 steps of 1% changes stay one chain; fine-tuning steps that move
# every weight, each an XOR of 59% of float32, alternate with dense copies)
CHAIN_MAX_RATIO = 1.0
# ``auto`` tries ``sparse`` only when at most this fraction of the words changed (each costs
# its value and a position: past it, xor or dense is smaller)
SPARSE_MAX_FRACTION = 0.25


def compressor(dtype_name: str, nbytes: int, config: Config) -> str:
    """The compressor for a tensor: the configured one, or ``auto``'s choice."""
    if config.compression != "auto":
        return config.compression
    return "zstd" if dtype_name in _FLOATS and nbytes >= ZSTD_MIN_BYTES else "lz4"


def start_encode(words: np.ndarray, config: Config, dtype_name: str) -> codec.Encoding:
    """Start compressing a changed tensor's canonical ``words`` on the codec's threads (a
    caller may hash them meanwhile); ``finish`` stores the result."""
    cname = compressor(dtype_name, words.nbytes, config)
    return codec.Encoding(words, config.compression_level, cname)


def _settled(encoding: codec.Encoding, config: Config) -> codec.Encoding:
    """Under ``auto``, floats that zstd does not shrink (random-looking data) are stored
    with lz4, which decodes them faster."""
    if (
        config.compression == "auto"
        and encoding.cname == "zstd"
        and encoding.size() > ZSTD_MAX_RATIO * encoding.words.nbytes
    ):
        return codec.Encoding(encoding.words, None, "lz4")
    return encoding


def finish(encoding: codec.Encoding, store: ObjectStore, config: Config) -> Storage:
    """Write a started encoding to the store; returns its dense record."""
    return Dense(store_encoding(encoding, store, config))


def store_encoding(encoding: codec.Encoding, store: ObjectStore, config: Config) -> ObjectRef:
    return store.put(_settled(encoding, config).pieces())  # streamed: one chunk at a time


def sparse_index_dtype(words: int) -> np.dtype:
    """The unsigned words carrying a sparse update's position gaps in a tensor of ``words``
    words."""
    return np.dtype("<u4") if words <= 1 << 32 else np.dtype("<u8")


def store_tensor(
    dtype_name: str,
    shape: tuple[int, ...],
    words: np.ndarray,
    store: ObjectStore,
    config: Config,
    digest: str | None = None,
    base: TensorRecord | None = None,
    check: str | None = None,
    crc: int | None = None,
) -> TensorRecord:
    """Encode and store a changed tensor's canonical ``words``; returns its record. The
    identity hash (unless ``digest`` already is it), its BLAKE3 (unless ``check`` is) and
    its CRC-32 (unless ``crc`` is) are computed while the codec's threads compress.

    ``base``: the record of the tensor's previous version, which delta encodings may apply
    to (see ``theta.updateType``); it is used only when it has the same dtype and shape, its
    chain is shorter than ``theta.maxChainDepth`` and it rebuilds from local, sound objects.
    """
    base_words = _base_words(dtype_name, shape, base, store, config)  # None under dense
    if base_words is None:
        encoding = start_encode(words, config, dtype_name)
    else:
        candidates = _deltas(words, base_words, dtype_name, config)
    if digest is None:
        digest = identity_hash(dtype_name, shape, words)
    if check is None:
        check = content_hash(dtype_name, shape, words)
    if crc is None:
        crc = crc32(words)  # for zip-based writers at checkout (zlib releases the GIL)
    if base_words is None:
        storage = finish(encoding, store, config)
    else:
        assert base is not None
        storage = _smallest(candidates, words, dtype_name, base, store, config)
    return TensorRecord(dtype_name, shape, digest, storage, crc, check)


def _deltas(
    words: np.ndarray, base: np.ndarray, dtype_name: str, config: Config
) -> list[tuple[str, list[codec.Encoding]]]:
    """The delta encodings ``theta.updateType`` asks for, started. Under ``auto``, xor is
    tried only when a sample of it compresses well against the same sample stored whole,
    and sparse only when few words changed."""
    chosen = config.update_type
    started: list[tuple[str, list[codec.Encoding]]] = []
    xor = chosen == "xor" or (chosen == "auto" and _xor_promising(words, base, config, dtype_name))
    if chosen in ("auto", "sparse"):
        differs = words != base
        count = int(np.count_nonzero(differs))
        if count > 0 and (chosen == "sparse" or count <= SPARSE_MAX_FRACTION * words.size):
            positions = np.flatnonzero(differs)
            del differs
            gaps = rebuild.gaps_of(positions, sparse_index_dtype(words.size))
            values = np.ascontiguousarray(words[positions])
            pieces = [codec.Encoding(gaps, None, "lz4"), start_encode(values, config, dtype_name)]
            started.append(("sparse", pieces))
    if xor:  # into the base's words, which nothing needs after this: one tensor less held
        mixed = np.bitwise_xor(words, base, out=base if base.flags.writeable else None)
        started.insert(0, ("xor", [start_encode(mixed, config, dtype_name)]))
    return started


# words of a tensor sampled to judge whether its XOR with the base is worth encoding whole
XOR_SAMPLE_WORDS = 1 << 16


def _xor_promising(words: np.ndarray, base: np.ndarray, config: Config, dtype_name: str) -> bool:
    """Whether a stretch from the middle of the tensor XOR its base compresses to less than
    ``DELTA_MAX_RATIO`` of the stretch stored whole (a tensor every bit of which changed, or
    one drawn anew, is not worth a second full encoding)."""
    if words.size <= 4 * XOR_SAMPLE_WORDS:
        return True  # small: encoding it whole costs little more than judging it
    start = (words.size - XOR_SAMPLE_WORDS) // 2
    sample = words[start : start + XOR_SAMPLE_WORDS]
    mixed = np.bitwise_xor(sample, base[start : start + XOR_SAMPLE_WORDS])
    dense = start_encode(np.ascontiguousarray(sample), config, dtype_name).size()
    return start_encode(mixed, config, dtype_name).size() <= DELTA_MAX_RATIO * dense


def _smallest(
    candidates: list[tuple[str, list[codec.Encoding]]],
    words: np.ndarray,
    dtype_name: str,
    base: TensorRecord,
    store: ObjectStore,
    config: Config,
) -> Storage:
    """Stores the smallest of the started deltas, or under ``auto`` the dense tensor when no
    delta is much smaller: a delta ties the tensor to its base's objects (kept, and decoded
    at checkout), so it is taken only at most ``DELTA_MAX_RATIO`` of the dense size, and
    only while the chain's updates stay within ``CHAIN_MAX_RATIO`` of the dense copy at its
    root (the tensor's size when last stored whole). The dense tensor is not encoded when a
    delta is at most ``DELTA_SURE_RATIO`` of that copy."""
    sizes = {kind: sum(e.size() for e in pieces) for kind, pieces in candidates}
    if not sizes:  # sparse asked for, nothing changed: impossible for a changed tensor
        return finish(start_encode(words, config, dtype_name), store, config)
    kind = min(sizes, key=lambda k: (sizes[k], k))
    root = chain(base.storage)[1]
    root_size = sum(o.size for o in root.objects)
    chained = sum(o.size for o in base.objects) - root_size
    if config.update_type == "auto" and chained + sizes[kind] > CHAIN_MAX_RATIO * root_size:
        return finish(start_encode(words, config, dtype_name), store, config)
    if config.update_type == "auto" and sizes[kind] > DELTA_SURE_RATIO * root_size:
        dense = _settled(start_encode(words, config, dtype_name), config)
        if sizes[kind] > DELTA_MAX_RATIO * dense.size():
            return finish(dense, store, config)
    pieces = dict(candidates)[kind]
    own = tuple(store_encoding(e, store, config) for e in pieces)
    if kind == "xor":
        return Xor(own, base.hash, base.storage)
    return Sparse(own, base.hash, base.storage, pieces[1].words.size)


def _base_words(
    dtype_name: str,
    shape: tuple[int, ...],
    base: TensorRecord | None,
    store: ObjectStore,
    config: Config,
) -> np.ndarray | None:
    """The base's words when a delta may apply to it, else None."""
    if (
        base is None
        or config.update_type == "dense"
        or (base.dtype, tuple(base.shape)) != (dtype_name, tuple(shape))
        or depth(base.storage) >= config.max_chain_depth
        or not all(store.is_sound(obj) for obj in base.objects)
    ):
        return None
    try:
        words = decode(base, store)
    except ThetaError:
        return None
    if not matches(base, words):
        return None
    return words


def matches(record: TensorRecord, words: bytearray | np.ndarray) -> bool:
    """Whether ``words`` are the tensor ``record`` describes, by its BLAKE3 (schema 3) or,
    in a record without one, by its identity hash."""
    if record.blake3 is not None:
        return content_hash(record.dtype, record.shape, words) == record.blake3
    return identity_hash(record.dtype, record.shape, words) == record.hash


def decode_bytes(
    record: TensorRecord, store: ObjectStore, new: Callable[[int], bytearray] = bytearray
) -> bytearray | np.ndarray:
    """The tensor's canonical bytes, for a writer: a dense object in the words layout is
    decoded straight into the buffer ``new(nbytes)`` gives (the common case, which loads no
    numpy), an empty tensor is no bytes, any other tensor is as ``decode`` rebuilds it.
    Raises as ``decode`` does."""
    steps, storage = chain(record.storage)
    if not steps and isinstance(storage, Dense):
        size, count = word_count(record)
        if count == 0:
            return bytearray()
        data = codec.decode_direct(store.path(storage.object.oid), size, count, new)
        if data is not None:
            return data
    return decode(record, store)


def open_pieces(record: TensorRecord, store: ObjectStore) -> Iterator[memoryview] | None:
    """The canonical bytes of a tensor stored whole in the words layout, chunk by chunk as
    c-blosc decodes them (``codec.open_pieces``: each piece is overwritten by the next, and
    nothing is verified); None for any other tensor."""
    steps, storage = chain(record.storage)
    if steps or not isinstance(storage, Dense):
        return None
    size, count = word_count(record)
    if count == 0:
        return None
    return codec.open_pieces(store.path(storage.object.oid), size, count)


def word_count(record: TensorRecord) -> tuple[int, int]:
    """Bytes per word (``tensors.word_size``) and number of words of the tensor's canonical
    bytes."""
    itemsize = get_dtype(record.dtype).itemsize
    size = word_size(itemsize)
    return size, numel(record.shape) * itemsize // size


def decode(record: TensorRecord, store: ObjectStore) -> np.ndarray:
    """The tensor's canonical words (``tensors.word_dtype`` of its dtype), rebuilt from its
    objects (which must be local) by applying its chain from the dense root up. Raises
    CorruptObjectError for an object that does not decode or an update that does not fit."""
    size, count = word_count(record)
    word = word_dtype(size)
    steps, storage = chain(record.storage)
    if not isinstance(storage, Dense):
        raise ManifestError(f"encoding `{storage.encoding}` cannot be decoded: upgrade git-theta")
    words = codec.decode(store.path(storage.object.oid), word, count)
    if steps and not words.flags.writeable:
        words = words.copy()
    for step in reversed(steps):
        words = _apply(step, words, tuple(record.shape), record.dtype, store)
    return words


def _apply(
    step: Delta, words: np.ndarray, shape: tuple[int, ...], dtype_name: str, store: ObjectStore
) -> np.ndarray:
    """Applies one update of a chain to its base's ``words``; returns the new words (the
    same array, changed in place, where the update allows)."""

    def read(index: int, word: np.dtype, count: int) -> np.ndarray:
        return codec.decode(store.path(step.own[index].oid), word, count)

    def replace(words: np.ndarray, first: int, count: int, claim: str) -> None:
        """The words at the positions whose gaps object ``first`` holds replaced, in place,
        by the words of object ``first + 1`` (``count`` of each)."""
        if count > words.size:
            raise CorruptObjectError(f"{claim} {count} words of a tensor of {words.size}")
        gaps = read(first, sparse_index_dtype(words.size), count)
        rebuild.replace(words, gaps, read(first + 1, words.dtype, count))

    if isinstance(step, Xor):
        words ^= read(0, words.dtype, words.size)
        return words
    if isinstance(step, Sparse):
        replace(words, 0, step.changed, "sparse update changes")
        return words
    if isinstance(step, (LowRank, Ia3)):
        if not (rebuild.is_float(step.factors) and rebuild.is_float(dtype_name)):
            raise CorruptObjectError(
                f"{step.encoding} update of {dtype_name} values with {step.factors} factors: "
                "both must be floating-point"
            )
        if isinstance(step, LowRank) and len(shape) < 2:
            raise CorruptObjectError("low-rank update of a tensor of fewer than 2 dimensions")
        factor = get_dtype(step.factors)
        fword = word_dtype(factor.itemsize)
        if isinstance(step, LowRank):
            rows, cols = rebuild.matrix_shape(shape)
            r = rebuild.values(read(0, fword, rows * step.rank), step.factors)
            c = rebuild.values(read(1, fword, step.rank * cols), step.factors)
            words = rebuild.low_rank(
                words,
                dtype_name,
                shape,
                r.reshape(rows, step.rank),
                c.reshape(step.rank, cols),
                step.scale,
            )
        else:
            if not rebuild.broadcasts(step.scale_shape, shape):
                raise CorruptObjectError(
                    f"ia3 scale of shape {list(step.scale_shape)} does not broadcast to the "
                    f"tensor's {list(shape)}"
                )
            s = rebuild.values(read(0, fword, numel(step.scale_shape)), step.factors)
            words = rebuild.ia3(words, dtype_name, shape, s.reshape(step.scale_shape))
        if step.corrected:  # the last two objects
            replace(words, len(step.own) - 2, step.corrected, "update corrects")
        return words
    raise ManifestError(f"encoding `{step.encoding}` cannot be decoded: upgrade git-theta")
