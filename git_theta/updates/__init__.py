"""Update encodings: how a tensor's record is turned into objects and back.

One function per direction, dispatched on the record's type (``manifest.Storage``), so a new
encoding (xor, sparse, low-rank, ia3) adds a record type and its branches here and leaves
``filter.py`` alone. Today: ``dense``, the whole tensor in one object.
"""

from __future__ import annotations

import numpy as np

from git_theta import codec
from git_theta.config import Config
from git_theta.errors import ManifestError
from git_theta.manifest import Dense, Storage, TensorRecord
from git_theta.store import ObjectStore
from git_theta.tensors import crc32, identity_hash, numel, word_dtype
from git_theta.tensors import dtype as get_dtype

# ``auto``: zstd only for floats this big (below, lz4 is as small), and only when it saves
# this fraction over storing the bytes (else lz4, which decodes faster)
ZSTD_MIN_BYTES = 4096
ZSTD_MAX_RATIO = 0.98
_FLOATS = frozenset({"float64", "float32", "float16", "bfloat16", "complex64", "complex128"})


def compressor(dtype_name: str, nbytes: int, config: Config) -> str:
    """The compressor for a tensor: the configured one, or ``auto``'s choice."""
    if config.compression != "auto":
        return config.compression
    return "zstd" if dtype_name in _FLOATS and nbytes >= ZSTD_MIN_BYTES else "lz4"


def start_encode(words: np.ndarray, config: Config, dtype_name: str) -> codec.Encoding:
    """Start compressing a changed tensor's canonical ``words`` on tensorstore's threads (a
    caller may hash them meanwhile); ``finish`` stores the result."""
    cname = compressor(dtype_name, words.nbytes, config)
    return codec.Encoding(words, config.compression_level, cname)


def finish(encoding: codec.Encoding, store: ObjectStore, config: Config) -> Storage:
    """Write a started encoding to the store; returns its record. Under ``auto``, floats
    that zstd does not shrink (random-looking data) are stored with lz4, which decodes them
    faster."""
    if (
        config.compression == "auto"
        and encoding.cname == "zstd"
        and encoding.size() > ZSTD_MAX_RATIO * encoding.words.nbytes
    ):
        encoding = codec.Encoding(encoding.words, None, "lz4")
    return Dense(store.put(encoding.pieces()))  # streamed: one chunk at a time


def store_tensor(
    dtype_name: str,
    shape: tuple[int, ...],
    words: np.ndarray,
    store: ObjectStore,
    config: Config,
    digest: str | None = None,
) -> TensorRecord:
    """Encode and store a changed tensor's canonical ``words``; returns its record. The
    identity hash (unless ``digest`` already is it) and the CRC-32 are computed while
    tensorstore's threads compress."""
    encoding = start_encode(words, config, dtype_name)
    if digest is None:
        digest = identity_hash(dtype_name, shape, words)
    crc = crc32(words)  # for zip-based writers at checkout (zlib releases the GIL)
    return TensorRecord(dtype_name, shape, digest, finish(encoding, store, config), crc)


def decode(record: TensorRecord, store: ObjectStore) -> np.ndarray:
    """The tensor's canonical words (``tensors.word_dtype`` of its dtype), rebuilt from its
    objects (which must be local). Raises CorruptObjectError for an object that does not
    decode."""
    itemsize = get_dtype(record.dtype).itemsize
    word = word_dtype(itemsize)
    count = numel(record.shape) * itemsize // word.itemsize
    storage = record.storage
    if isinstance(storage, Dense):
        return codec.decode(store.path(storage.object.oid), word, count)
    raise ManifestError(f"encoding `{storage.encoding}` cannot be decoded: upgrade git-theta")
