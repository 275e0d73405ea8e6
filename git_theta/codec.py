"""Encode one tensor (or update) as one blob: a tensorstore zarr v3 array, packed.

The array is 1-D over the tensor's elements carried as unsigned words of the element
width (see ``tensors.word_dtype``), compressed with blosc (byte shuffle + lz4, or zstd when
configured), which is lossless for every dtype. The blob names its codec (in ``zarr.json``),
so objects written with either compressor decode the same way. Tensorstore writes the array's keys (``zarr.json`` and one key
per chunk) to an in-memory key-value store; the blob is those keys packed in sorted order:

    b"git-theta zarr v1\\n"  u32 count  { u16 key length, key, u64 value length, value }*

All integers are little-endian. The same input gives the same blob.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from git_theta.errors import CorruptObjectError

MAGIC = b"git-theta zarr v1\n"
CHUNK_BYTES = 16 << 20
_COUNT = struct.Struct("<I")
_KEY = struct.Struct("<H")
_VALUE = struct.Struct("<Q")


COMPRESSORS = ("lz4", "zstd")
DEFAULT_LEVEL = {"lz4": 5, "zstd": 1}


def _spec(words: int, word: np.dtype, clevel: int, cname: str = "lz4") -> dict:
    chunk = max(1, min(words, CHUNK_BYTES // word.itemsize))
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "memory"},
        "metadata": {
            "shape": [words],
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk]}},
            "chunk_key_encoding": {"name": "default"},
            "data_type": word.name,
            "fill_value": 0,
            "codecs": [
                {"name": "bytes", "configuration": {"endian": "little"}},
                {
                    "name": "blosc",
                    "configuration": {
                        "cname": cname,
                        "clevel": clevel,
                        "shuffle": "shuffle" if word.itemsize > 1 else "noshuffle",
                        "typesize": word.itemsize,
                        "blocksize": 0,
                    },
                },
            ],
        },
        "create": True,
    }


def encode(words: np.ndarray, clevel: int | None = None, cname: str = "lz4") -> Iterator[bytes]:
    """Encode a contiguous 1-D array of unsigned words; yields the blob in pieces.

    ``cname`` is blosc's compressor: ``lz4`` (the default: about 2.5x faster to encode and
    decode than zstd on float weights) or ``zstd`` (smaller, notably for 16-bit floats)."""
    if cname not in COMPRESSORS:
        raise ValueError(f"unknown compressor {cname!r} (use {' or '.join(COMPRESSORS)})")
    clevel = DEFAULT_LEVEL[cname] if clevel is None else clevel
    import tensorstore as ts

    if words.ndim != 1 or words.dtype.kind != "u" or not words.flags.c_contiguous:
        raise ValueError("codec.encode takes a contiguous 1-D array of unsigned words")
    context = ts.Context()
    array = ts.open(_spec(words.size, words.dtype, clevel, cname), context=context).result()
    if words.size:
        array.write(words).result()
    store = ts.KvStore.open({"driver": "memory"}, context=context).result()
    keys = sorted(store.list().result())
    yield MAGIC + _COUNT.pack(len(keys))
    for key in keys:
        value = store.read(key).result().value
        yield _KEY.pack(len(key)) + key + _VALUE.pack(len(value))
        yield value


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise CorruptObjectError("object is truncated")
    return data


def _unpack(blob: bytes | memoryview | BinaryIO) -> dict[bytes, bytes]:
    """The keys and values of a blob (its bytes, or a binary file positioned at its start),
    read front to back: each value is read once, straight into its own bytes object."""
    stream = io.BytesIO(blob) if isinstance(blob, (bytes, memoryview)) else blob
    if stream.read(len(MAGIC)) != MAGIC:
        raise CorruptObjectError("object is not a git-theta zarr blob (bad magic)")
    (count,) = _COUNT.unpack(_read_exact(stream, _COUNT.size))
    entries: dict[bytes, bytes] = {}
    for _ in range(count):
        (klen,) = _KEY.unpack(_read_exact(stream, _KEY.size))
        key = _read_exact(stream, klen)
        (vlen,) = _VALUE.unpack(_read_exact(stream, _VALUE.size))
        entries[key] = _read_exact(stream, vlen)
    if stream.read(1):
        raise CorruptObjectError("object has trailing bytes")
    return entries


def decode(blob: bytes | memoryview | BinaryIO, word: np.dtype, words: int) -> np.ndarray:
    """Decode a blob made by ``encode`` (its bytes, or a binary file positioned at its start);
    checks it holds ``words`` words of type ``word``."""
    import tensorstore as ts

    entries = _unpack(blob)
    context = ts.Context()
    store = ts.KvStore.open({"driver": "memory"}, context=context).result()
    for key, value in entries.items():
        store.write(key, value).result()
    try:
        array = ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "memory"}, "open": True}, context=context
        ).result()
    except Exception as exc:  # tensorstore raises ValueError subclasses of its own
        raise CorruptObjectError(f"object cannot be decoded: {exc}") from exc
    if array.dtype.numpy_dtype != word or list(array.shape) != [words]:
        raise CorruptObjectError(
            f"object holds {array.dtype.name}[{', '.join(map(str, array.shape))}], "
            f"expected {word.name}[{words}]"
        )
    try:
        return np.ascontiguousarray(array.read().result())
    except Exception as exc:
        raise CorruptObjectError(f"object cannot be decoded: {exc}") from exc
