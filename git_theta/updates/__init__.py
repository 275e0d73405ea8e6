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
from git_theta.tensors import dtype as get_dtype
from git_theta.tensors import numel, word_dtype


def start_encode(words: np.ndarray, config: Config) -> codec.Encoding:
    """Start compressing a changed tensor's canonical ``words`` on tensorstore's threads (a
    caller may hash them meanwhile); ``finish`` stores the result."""
    return codec.Encoding(words, config.compression_level, config.compression)


def finish(encoding: codec.Encoding, store: ObjectStore) -> Storage:
    """Write a started encoding to the store; returns its record."""
    return Dense(store.put(encoding.pieces()))


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
