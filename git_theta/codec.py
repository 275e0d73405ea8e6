"""Encode one tensor (or update) as one blob: a tensorstore zarr v3 array in a zip archive.

Two layouts, each named by the array's own metadata (``zarr.json``), so every object ever
written decodes the same way:

- *words*: a 1-D array over the tensor's elements carried as unsigned words of the element
  width (see ``tensors.word_dtype``), each chunk compressed by blosc: byte shuffle (the
  chunk's words split into byte planes, every word's first byte, then every second byte...)
  and lz4, or zstd. With zstd one blosc block spans the whole chunk and blosc compresses each
  byte plane apart, so the sign and exponent bytes of floats, which repeat a few values, are
  coded apart from the mantissa bytes, which look random: float weights come out 10-20%
  smaller than with lz4 (MiniLM-L6: 83% of fp32, 69% of bf16, 85% of fp16).
- *planes*: a 2-D ``uint8`` array [words, bytes per word] that zarr's ``transpose`` codec
  stores plane by plane, then zstd. As small as the words layout with zstd but slower to
  decode; git-theta wrote it for floats in one release and still writes it when asked.

Both are lossless for every dtype. The blob is the array's keys (``zarr.json`` and one key
per chunk) as the members of an uncompressed zip archive, in sorted order (zarr's zip-store
layout). The words layout's keys are made here, each chunk compressed by c-blosc on the
codec's threads with the calls tensorstore's blosc codec makes (tensorstore reads the array
as its own; the bytes differ only where the zstd each library bundles does); the planes
layout's keys are written by tensorstore to an in-memory key-value store. The same input
gives the same blob. A stored object in the words layout is decoded by c-blosc straight
from its file (``_direct``); any other object, or one that is not exactly as git-theta
writes it, is opened in place with tensorstore's ``zip`` key-value store, which reports
what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta.errors import CorruptObjectError
from git_theta.pool import Pool, Task
from git_theta.zipstream import ZipStream

MAGIC = b"PK\x03\x04"
# 1 MiB chunks: the chunks of one array are encoded and decoded on all cores, and blosc
# runs faster on a chunk that stays in cache (a 38 MB tensor: 0.19 s as one chunk,
# 0.04 s as 1 MiB chunks, on 2 cores); a zip member costs about 100 bytes
CHUNK_BYTES = 1 << 20
# blosc lz4 and blosc zstd (the words layout); byte planes + zstd (the planes layout)
COMPRESSORS = ("lz4", "zstd", "planes")
DEFAULT_LEVEL = {"lz4": 5, "zstd": 1, "planes": 1}


def _planes_spec(words: int, word: np.dtype, level: int) -> dict:
    rows = max(1, min(words, CHUNK_BYTES // word.itemsize))
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "memory"},
        "metadata": {
            "shape": [words, word.itemsize],
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": [rows, word.itemsize]},
            },
            "chunk_key_encoding": {"name": "default"},
            "data_type": "uint8",
            "fill_value": 0,
            "codecs": [
                {"name": "transpose", "configuration": {"order": [1, 0]}},
                {"name": "bytes"},
                {"name": "zstd", "configuration": {"level": level, "checksum": False}},
            ],
        },
        "create": True,
        "store_data_equal_to_fill_value": True,
    }


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
                        # zstd: one block per chunk, so each byte plane is coded whole (with
                        # blosc's default blocks of 32-256 KiB floats come out 8% larger)
                        "blocksize": chunk * word.itemsize if cname == "zstd" else 0,
                    },
                },
            ],
        },
        "create": True,
        # every chunk is stored, zeros too: the object's size then bounds what it decodes to
        "store_data_equal_to_fill_value": True,
    }


_import_lock = threading.Lock()


def _tensorstore() -> Any:
    """tensorstore, imported on first use (a checkout that decodes with c-blosc never needs
    it), by one thread at a time: threads importing it at once could see it half-made, and
    a broken install must fail each of them with its own ImportError."""
    with _import_lock:
        import tensorstore

    return tensorstore


def encode(
    words: np.ndarray, clevel: int | None = None, cname: str = "lz4"
) -> Iterator[bytes | memoryview]:
    """Encode a contiguous 1-D array of unsigned words; yields the blob in pieces.

    ``cname``: ``lz4`` (blosc, the words layout: fastest, for integers and small tensors),
    ``zstd`` (blosc, the words layout: smallest for floats) or ``planes`` (the planes
    layout)."""
    yield from Encoding(words, clevel, cname).pieces()


class Encoding:
    """An encoding under way: made, it starts compressing ``words`` on other threads (so
    the caller can hash them meanwhile); ``pieces()`` waits for it and yields the blob (once).
    ``words`` must not change until then.

    The words layout is compressed by c-blosc straight from ``words``, a chunk per task on
    the codec's threads, with the metadata and the c-blosc calls tensorstore's zarr driver
    uses, without tensorstore's copy of the tensor or its import. The planes layout goes
    through tensorstore."""

    def __init__(self, words: np.ndarray, clevel: int | None = None, cname: str = "lz4") -> None:
        if cname not in COMPRESSORS:
            raise ValueError(f"unknown compressor {cname!r} (use {' or '.join(COMPRESSORS)})")
        clevel = DEFAULT_LEVEL[cname] if clevel is None else clevel
        if cname != "planes" and not 0 <= clevel <= 9:
            raise ValueError(f"blosc compression level {clevel} is out of range (0 to 9)")
        if words.ndim != 1 or words.dtype.kind != "u" or not words.flags.c_contiguous:
            raise ValueError("codec.encode takes a contiguous 1-D array of unsigned words")
        self.words = words
        self.cname = cname
        self._chunks: list[Task[tuple[bytes, int]] | None] = []
        if cname == "planes":
            ts = _tensorstore()
            self._context = ts.Context()
            spec = _planes_spec(words.size, words.dtype, clevel)
            data = words.view(np.uint8).reshape(words.size, words.dtype.itemsize)
            array = ts.open(spec, context=self._context).result()
            self._written = array.write(data) if words.size else None
        else:
            spec = _spec(words.size, words.dtype, clevel, cname)
            self._metadata = _metadata_bytes(spec["metadata"], words.dtype.itemsize)
            self._chunks = list(_compress_chunks(words, spec))

    def _keys(self) -> Any:
        """The finished array's key-value store (``zarr.json`` and the compressed chunks)."""
        ts = _tensorstore()

        if self._written is not None:
            self._written.result()
        return ts.KvStore.open({"driver": "memory"}, context=self._context).result()

    def size(self) -> int:
        """Bytes of the array's keys, ``zarr.json`` and the compressed chunks (the blob adds
        its zip records)."""
        if self.cname != "planes":
            return len(self._metadata) + sum(len(_chunk_result(chunk)[0]) for chunk in self._chunks)
        store = self._keys()
        return sum(len(store.read(key).result().value) for key in store.list().result())

    def pieces(self) -> Iterator[bytes | memoryview]:
        pieces = _Pieces()
        archive = ZipStream(pieces, align=1)
        if self.cname != "planes":
            # the members in the order of their names' bytes, as a zarr zip store lists keys
            for key in sorted([*(f"c/{i}" for i in range(len(self._chunks))), "zarr.json"]):
                if key == "zarr.json":
                    archive.add(key, self._metadata)
                else:
                    index = int(key[2:])
                    data, crc = _chunk_result(self._chunks[index])
                    self._chunks[index] = None  # memory holds one copy of the blob
                    archive.add(key, data, crc)
                yield from pieces.take()
        else:
            store = self._keys()
            for key in sorted(store.list().result()):
                archive.add(key.decode(), store.read(key).result().value)
                store.write(key, None).result()  # dropped: memory holds one copy of the blob
                yield from pieces.take()
        archive.close()
        yield from pieces.take()


def _chunk_result(chunk: Task[tuple[bytes, int]] | None) -> tuple[bytes, int]:
    """A compressed chunk and its CRC-32, once compressed (None: taken by ``pieces()``)."""
    if chunk is None:
        raise RuntimeError("an encoding's chunks are gone once its pieces are taken")
    return chunk.result()


def _metadata_bytes(metadata: dict, itemsize: int) -> bytes:
    """``zarr.json`` as tensorstore writes it for ``metadata``: keys sorted, no spaces, the
    array's node type and format added, and for one-byte words no byte order or type size
    (tensorstore drops what cannot vary)."""
    codecs = []
    for entry in metadata["codecs"]:
        if itemsize == 1 and entry["name"] == "bytes":
            entry = {"name": "bytes"}
        elif itemsize == 1 and entry["name"] == "blosc":
            config = {k: v for k, v in entry["configuration"].items() if k != "typesize"}
            entry = {**entry, "configuration": config}
        codecs.append(entry)
    full = {**metadata, "codecs": codecs, "node_type": "array", "zarr_format": 3}
    return json.dumps(full, sort_keys=True, separators=(",", ":")).encode()


def _compress_chunks(words: np.ndarray, spec: dict) -> Iterator[Task[tuple[bytes, int]]]:
    """Each chunk of ``words`` (in the words layout ``spec`` gives) compressed on the codec's
    threads: tasks giving (compressed bytes, their CRC-32), in chunk order."""
    metadata = spec["metadata"]
    blosc = metadata["codecs"][1]["configuration"]
    itemsize = words.dtype.itemsize
    chunk = metadata["chunk_grid"]["configuration"]["chunk_shape"][0] * itemsize
    flat = words.view(np.uint8)
    pool = _codec_pool()
    for start in range(0, flat.size, chunk):
        yield pool.submit(
            _compress_chunk,
            flat[start : start + chunk],
            chunk,
            itemsize,
            blosc["clevel"],
            1 if blosc["shuffle"] == "shuffle" else 0,
            blosc["cname"],
            blosc["blocksize"],
        )


def _compress_chunk(
    data: np.ndarray, chunk: int, itemsize: int, clevel: int, shuffle: int, cname: str, block: int
) -> tuple[bytes, int]:
    """One chunk compressed as tensorstore's blosc codec does it: the last, short chunk of
    an array padded with zeros to the chunk's length."""
    if data.size < chunk:
        padded = np.zeros(chunk, np.uint8)
        padded[: data.size] = data
        data = padded
    blosc = _blosc_module or _blosc()
    with _BLOCK_SIZE.holding(block):
        compressed = blosc.compress_ptr(data.ctypes.data, chunk, itemsize, clevel, shuffle, cname)
    return compressed, zlib.crc32(compressed)


class _BlockSize:
    """c-blosc's block size is one setting of the process, which each compression reads as
    it starts (python-blosc takes no block size per call): compressions that need the same
    size run together, ones that need another wait until they are done, then set it. It is
    set before every compression after a pause, so a caller of python-blosc's own
    ``set_blocksize`` in this process changes nothing git-theta writes."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._size: int | None = None
        self._users = 0

    @contextlib.contextmanager
    def holding(self, size: int) -> Iterator[None]:
        with self._changed:
            while self._users and self._size != size:
                self._changed.wait()
            if not self._users:
                (_blosc_module or _blosc()).set_blocksize(size)
                self._size = size
            self._users += 1
        try:
            yield
        finally:
            with self._changed:
                self._users -= 1
                if not self._users:
                    self._changed.notify_all()


_BLOCK_SIZE = _BlockSize()
_pool_lock = threading.Lock()
_pool: Pool | None = None


def _codec_pool() -> Pool:
    """The threads that compress chunks, one per core, made at first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = Pool(os.cpu_count() or 1, "theta-codec")
        return _pool


def _forked() -> None:
    """A forked child has none of its parent's threads, and may have copied a lock or a
    block size in use: it starts afresh."""
    global _BLOCK_SIZE, _pool_lock, _pool
    _BLOCK_SIZE, _pool_lock, _pool = _BlockSize(), threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class _Pieces:
    """A write-only stream that hands what was written on to a generator."""

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []

    def write(self, data: bytes | memoryview) -> int:
        # kept as given, no copy: the zip writer passes bytes, or views of immutable bytes
        self._parts.append(data)
        return len(data)

    def take(self) -> list[bytes | memoryview]:
        parts, self._parts = self._parts, []
        return parts


def _unpack(blob: bytes | memoryview) -> dict[bytes, bytes]:
    """The keys and values of a blob (for inspection and tests)."""
    if bytes(blob[:4]) != MAGIC:
        raise CorruptObjectError("object is not a git-theta zarr zip (bad magic)")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            return {i.filename.encode(): archive.read(i) for i in archive.infolist()}
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CorruptObjectError(f"object is not a valid zip archive: {exc}") from exc


def decode(blob: bytes | memoryview | Path, word: np.dtype, words: int) -> np.ndarray:
    """Decode a blob made by ``encode`` (its bytes, or the path of a stored object, read in
    place); checks it holds ``words`` words of type ``word``."""
    if isinstance(blob, Path):
        direct = _direct(blob, word, words)
        if direct is not None:
            return direct
    array = _open(blob, word, words)
    try:
        return _as_words(array.read().result(), word)
    except Exception as exc:
        raise CorruptObjectError(f"object cannot be decoded: {exc}") from exc


def _as_words(data: np.ndarray, word: np.dtype) -> np.ndarray:
    """Decoded data of either layout as a contiguous 1-D array of ``word``."""
    data = np.ascontiguousarray(data)
    return data.reshape(-1).view(word) if data.ndim == 2 else data


def decode_pieces(path: Path, word: np.dtype, words: int, piece: int) -> Iterator[np.ndarray]:
    """The words of a stored object, ``piece`` words at a time (memory holds one piece)."""
    array = _open(path, word, words)
    for start in range(0, words, piece):
        try:
            yield _as_words(array[start : min(words, start + piece)].read().result(), word)
        except Exception as exc:
            raise CorruptObjectError(f"object cannot be decoded: {exc}") from exc


def _open(blob: bytes | memoryview | Path, word: np.dtype, words: int) -> Any:
    """The tensorstore array of a blob, checked to hold ``words`` words of type ``word``."""
    ts = _tensorstore()

    context = ts.Context()
    base: dict[str, Any]
    if isinstance(blob, Path):
        with open(blob, "rb") as f:
            head = f.read(len(MAGIC))
        base = {"driver": "file", "path": str(blob)}
    else:
        head = bytes(blob[: len(MAGIC)])
        memory = ts.KvStore.open({"driver": "memory"}, context=context).result()
        memory.write("object.zip", bytes(blob)).result()
        base = {"driver": "memory", "path": "object.zip"}
    if head != MAGIC:
        raise CorruptObjectError("object is not a git-theta zarr zip (bad magic)")
    spec = {"driver": "zarr3", "kvstore": {"driver": "zip", "base": base}, "open": True}
    try:
        array = ts.open(spec, context=context).result()
    except Exception as exc:  # tensorstore raises ValueError subclasses of its own
        raise CorruptObjectError(f"object cannot be decoded: {exc}") from exc
    layouts = ((word, [words]), (np.dtype(np.uint8), [words, word.itemsize]))
    if (array.dtype.numpy_dtype, list(array.shape)) not in layouts:
        raise CorruptObjectError(
            f"object holds {array.dtype.name}[{', '.join(map(str, array.shape))}], "
            f"expected {word.name}[{words}]"
        )
    _check_budget(words * word.itemsize)
    rows = [int(n or 0) for n in array.chunk_layout.read_chunk.shape or (0,)][0]
    if rows > max(words, 1):  # decoded whole, whatever the tensor's size
        raise CorruptObjectError(
            f"object's chunks hold {rows} words each, more than its {words}: it is damaged or "
            "hostile"
        )
    _check_chunks(array.kvstore, array, words)
    return array


def _check_budget(nbytes: int) -> None:
    """Refuses an object claiming more data than this process may hold (tensorstore would
    abort the process allocating it)."""
    budget = memory_budget()
    if nbytes > budget:
        raise CorruptObjectError(
            f"object claims {nbytes} bytes of data, more than this process may hold "
            f"({budget} bytes): it is damaged or hostile"
        )


# members of an object's zip archive are read from the file, not through zipfile's reader:
# its check of each member's CRC-32 would cost as much as decoding (the tensor's own hash is
# checked after decoding)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length
_MAX_METADATA = 1 << 16  # bytes of zarr.json: git-theta's are about 400
_BLOSC_HEADER = struct.Struct("<4xIII")  # ... uncompressed, block and compressed bytes


def _direct(path: Path, word: np.dtype, words: int) -> np.ndarray | None:
    """``decode_direct`` into an array of ``word`` (left unfilled until decoded into)."""
    if word.kind != "u":  # git-theta stores unsigned words only: tensorstore reports it
        return None
    data = _decode_into(path, word.itemsize, words, lambda n: np.empty(n, np.uint8))
    return None if data is None else data.view(word)


def decode_direct(
    path: Path, itemsize: int, words: int, new: Callable[[int], bytearray] = bytearray
) -> bytearray | None:
    """The bytes of a stored object in the words layout (``words`` unsigned words of
    ``itemsize`` bytes), decoded by c-blosc from its file, without numpy, into the buffer
    ``new(nbytes)`` gives (a new one, or a used one of that size: every byte is written);
    None when it is in another layout or not exactly as git-theta writes one (a member
    missing, compressed or out of place, a chunk whose header disagrees), for ``decode`` to
    decode through tensorstore or report. Opening an array through tensorstore's zip store
    costs about 0.4 ms, more than decoding most tensors; this costs a few tens of
    microseconds and a read."""
    return _decode_into(path, itemsize, words, new)


def _decode_into(path: Path, itemsize: int, words: int, new: Callable[[int], Any]) -> Any:
    """``decode_direct`` into the writable byte buffer ``new(nbytes)`` makes."""
    try:
        with open(path, "rb") as f:
            reader = _WordsReader.open(f, itemsize, words)
            if reader is None:
                return None
            out = new(reader.nbytes)
            view = memoryview(out)
            for index, start in enumerate(range(0, reader.nbytes, reader.chunk)):
                if not reader.decode(index, view[start : start + reader.chunk]):
                    return None
            return out
    except _READ_ERRORS:
        return None


_READ_ERRORS = (OSError, ValueError, EOFError, OverflowError, struct.error, zipfile.BadZipFile)


class Undecodable(Exception):
    """A chunk of an object that ``open_pieces`` opened does not decode directly (it is not
    exactly as git-theta writes one, or it is damaged): the caller decodes the object whole,
    which reports what is wrong."""


def open_pieces(path: Path, itemsize: int, words: int) -> Iterator[memoryview] | None:
    """The bytes of a stored object in the words layout, chunk by chunk, as views of one
    chunk-sized buffer that each next chunk overwrites (take each before asking for the
    next); None, before anything is decoded, when the object is in another layout or not as
    git-theta writes one. Raises Undecodable from the iteration when a chunk does not decode
    (the views given until then hold the bytes the chunks' headers promised). Checkout streams
    a large tensor this way: its first bytes reach git while the rest are decoded, and no
    buffer of the tensor's size is made."""
    try:
        f = open(path, "rb")  # noqa: SIM115  (closed by the iteration, or here)
    except OSError:
        return None  # the whole decoding reports it
    try:
        reader = _WordsReader.open(f, itemsize, words)
    except _READ_ERRORS:
        reader = None
    except BaseException:
        f.close()
        raise
    if reader is None:
        f.close()
        return None
    return _pieces(f, reader)


def _pieces(f: Any, reader: _WordsReader) -> Iterator[memoryview]:
    with f:
        scratch = memoryview(bytearray(reader.chunk))  # a whole chunk, the padded last one too
        for index, start in enumerate(range(0, reader.nbytes, reader.chunk)):
            try:
                decoded = reader.decode(index, scratch)
            except _READ_ERRORS as exc:
                raise Undecodable(f"chunk {index}: {exc}") from exc
            if not decoded:
                raise Undecodable(f"chunk {index} does not decode")
            yield scratch[: min(reader.chunk, reader.nbytes - start)]


class _WordsReader:
    """An object in the words layout, open for decoding chunk by chunk: its layout and every
    chunk's presence checked first, before any memory is taken for the data."""

    def __init__(self, archive: _Archive, chunk: int, nbytes: int) -> None:
        self.archive = archive
        self.chunk = chunk  # bytes per chunk (the last one is padded to it)
        self.nbytes = nbytes

    @classmethod
    def open(cls, f: Any, itemsize: int, words: int) -> _WordsReader | None:
        """The reader of the object open as ``f``, or None when it is not in the words layout
        exactly as git-theta writes it. Raises CorruptObjectError (a ValueError: the callers
        leave it to the whole decoding, which refuses it too) for one claiming more data
        than this process may hold, before anything is read for the data."""
        if sys.byteorder != "little":
            return None
        archive = _Archive(f)
        meta = archive.member("zarr.json")
        rows = _words_layout(None if meta is None else bytes(meta), itemsize, words)
        if rows is None:
            return None
        _check_budget(words * itemsize)
        count = -(-words // rows)
        if not all(archive.stored(f"c/{index}", _BLOSC_HEADER.size) for index in range(count)):
            return None  # a chunk is missing: found before memory is taken for the data
        return cls(archive, rows * itemsize, words * itemsize)

    def decode(self, index: int, out: memoryview) -> bool:
        """Decodes chunk ``index`` into ``out`` (the chunk's bytes, or the first of them for
        the last chunk, which is padded); False when it is not as its header claims or
        c-blosc refuses it."""
        data = self.archive.member(f"c/{index}")  # listed with a full header: checked at open
        if data is None:
            return False
        nbytes, _, cbytes = _BLOSC_HEADER.unpack_from(data)
        if nbytes != self.chunk or cbytes != len(data):
            return False  # c-blosc writes what the header claims: checked first
        if len(out) == self.chunk:
            return _unblosc(data, out)
        scratch = bytearray(self.chunk)  # the last chunk is padded to the chunk's length
        if not _unblosc(data, memoryview(scratch)):
            return False
        out[:] = memoryview(scratch)[: len(out)]
        return True


# an object this small is read whole, in one call; a larger one member by member
_READ_WHOLE = 4 << 20
_END = struct.Struct("<4s6xHII H")  # end of central directory: entries, size, offset, comment
_CENTRAL = struct.Struct("<4s4xHH8xIIHHH8xI")  # flags, method, sizes, name/extra/note, offset


class _Archive:
    """The stored members of an object's zip archive, read from the file open as ``f``.
    Sizes and offsets are checked against the file's before anything is read."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.size = f.seek(0, io.SEEK_END)
        self.whole: memoryview | None = None  # members are views of it, never copies
        if self.size <= _READ_WHOLE:
            f.seek(0)
            self.whole = memoryview(f.read())
            self.size = len(self.whole)
        # name -> (local header offset, method, compressed size, size)
        self.entries = self._directory()

    def _read(self, offset: int, count: int) -> bytes | memoryview:
        if offset < 0 or count < 0 or offset + count > self.size:
            raise ValueError("member out of the file")
        if self.whole is not None:
            return self.whole[offset : offset + count]
        self.f.seek(offset)
        data: bytes = self.f.read(count)
        if len(data) != count:
            raise EOFError("file shorter than it was")
        return data

    def _directory(self) -> dict[str, tuple[int, int, int, int]]:
        """The central directory as git-theta writes it (no comment, no ZIP64 records),
        parsed with struct; any other archive through zipfile."""
        if self.size >= _END.size:
            magic, count, cd_size, cd_offset, comment = _END.unpack(
                self._read(self.size - _END.size, _END.size)
            )
            if (
                magic == b"PK\x05\x06"
                and not comment
                and cd_offset + cd_size == self.size - _END.size
            ):
                table = self._read(cd_offset, cd_size)
                entries, pos = {}, 0
                for _ in range(count):
                    sig, flags, method, packed, size, name_len, extra_len, note_len, offset = (
                        _CENTRAL.unpack_from(table, pos)
                    )
                    if sig != b"PK\x01\x02" or _SENTINEL in (packed, size, offset):
                        break  # ZIP64 or not a central header: zipfile reads it
                    if flags & 1:  # encrypted: not an object git-theta wrote
                        method = -1
                    name = table[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len]
                    entries[bytes(name).decode("utf-8", "replace")] = (offset, method, packed, size)
                    pos += _CENTRAL.size + name_len + extra_len + note_len
                else:
                    if pos == cd_size:
                        return entries
        self.f.seek(0)
        try:
            archive = zipfile.ZipFile(self.f)
        except Exception:  # zipfile raises many kinds (NotImplementedError for a version)
            return {}  # no members: tensorstore decodes or reports it
        with archive:
            return {
                i.filename: (
                    i.header_offset,
                    -1 if i.flag_bits & 1 else i.compress_type,
                    i.compress_size,
                    i.file_size,
                )
                for i in archive.infolist()
            }

    def stored(self, name: str, at_least: int) -> bool:
        """Whether the directory lists member ``name`` stored plainly, of ``at_least`` bytes
        (nothing is read)."""
        entry = self.entries.get(name)
        return (
            entry is not None
            and entry[1] == zipfile.ZIP_STORED
            and entry[2] == entry[3]
            and entry[3] >= at_least
        )

    def member(self, name: str) -> bytes | memoryview | None:
        """The bytes of one member stored plainly (uncompressed), or None."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        offset, method, packed, size = entry
        if method != zipfile.ZIP_STORED or packed != size:
            return None
        magic, name_length, extra_length = _LOCAL_HEADER.unpack(
            self._read(offset, _LOCAL_HEADER.size)
        )
        if magic != MAGIC:
            return None
        return self._read(offset + _LOCAL_HEADER.size + name_length + extra_length, size)


_SENTINEL = 0xFFFFFFFF  # a size or offset held in a ZIP64 record instead
# zarr.json bytes (with the expected word size and count) -> words per chunk, or None
_layouts: dict[tuple[bytes, int, int], int | None] = {}


def _words_layout(meta: bytes | None, itemsize: int, words: int) -> int | None:
    """Words per chunk when ``meta`` (a zarr.json) describes the words layout of ``words``
    unsigned words of ``itemsize`` bytes with blosc chunks under default keys, else None.
    (Objects of tensors of one shape and dtype share their zarr.json: each is checked
    once.)"""
    if meta is None or len(meta) > _MAX_METADATA:
        return None
    key = (meta, itemsize, words)
    if key in _layouts:
        return _layouts.get(key)  # (another thread may have just cleared it: None, safe)
    rows = _check_layout(meta, itemsize, words)
    if len(_layouts) >= 4096:
        _layouts.clear()
    _layouts[key] = rows
    return rows


def _check_layout(meta: bytes, itemsize: int, words: int) -> int | None:
    try:
        m = json.loads(meta)
    except (ValueError, RecursionError):
        return None
    if not isinstance(m, dict):
        return None
    grid = m.get("chunk_grid")
    chunk = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) else None
    rows = chunk[0] if isinstance(chunk, list) and len(chunk) == 1 else None
    # git-theta never writes a chunk longer than the tensor: one would be decoded whole
    if type(rows) is not int or rows < 1 or words == 0 or rows > words:
        return None
    codecs = m.get("codecs")
    expected = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [words],
        "data_type": f"uint{8 * itemsize}",
        "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [rows]}},
        "chunk_key_encoding": m.get("chunk_key_encoding"),
        "codecs": codecs,
    }
    keys = m.get("chunk_key_encoding")
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    if (
        m != expected
        or type(m["shape"][0]) is not int
        or type(m["fill_value"]) is not int
        or keys
        not in ({"name": "default"}, {"name": "default", "configuration": {"separator": "/"}})
        or not isinstance(codecs, list)
        or len(codecs) != 2
        or codecs[0] not in (little, *([{"name": "bytes"}] if itemsize == 1 else []))
        or not isinstance(codecs[1], dict)
        or codecs[1].get("name") != "blosc"
    ):
        return None
    return rows


_blosc_ready = threading.Lock()
_blosc_module: Any = None


def _blosc() -> Any:
    """c-blosc's extension module from python-blosc, made ready for decoding on several
    threads at once: the GIL released during each call, and one thread per call (blosc
    would start its own threads at every call). It is loaded without the package around
    it, whose start-up imports numpy and unittest (for its self-test) and sets the threads
    otherwise."""
    global _blosc_module
    with _blosc_ready:
        if _blosc_module is None:
            ext = sys.modules.get("blosc.blosc_extension")
            if ext is None:
                import importlib.machinery
                import importlib.util

                package = importlib.util.find_spec("blosc")
                found = package and importlib.machinery.PathFinder.find_spec(
                    "blosc.blosc_extension", package.submodule_search_locations
                )
                if not found or found.loader is None:
                    raise ImportError("python-blosc is not installed: pip install blosc")
                ext = importlib.util.module_from_spec(found)
                found.loader.exec_module(ext)
                sys.modules["blosc.blosc_extension"] = ext  # the package finds it there
                ext.init()
            ext.set_releasegil(True)
            ext.set_nthreads(1)
            _blosc_module = ext
    return _blosc_module


def _unblosc(data: bytes | memoryview, out: memoryview) -> bool:
    """Decompresses one blosc chunk, whose header was checked to hold exactly ``out``'s
    bytes, into ``out`` (a writable byte buffer); False when c-blosc refuses it."""
    import ctypes

    blosc = _blosc_module or _blosc()
    first = ctypes.c_char.from_buffer(out)  # holds ``out``'s buffer while c-blosc writes it
    try:
        return bool(blosc.decompress_ptr(data, ctypes.addressof(first)) == len(out))
    except Exception:  # python-blosc's own error class derives from Exception only
        return False


# bytes of zeros an object may stand for by omitting chunks: objects written before every
# chunk was stored omit the chunks that are all zeros; past this, a few bytes could claim
# gigabytes of zeros
MAX_MISSING = 64 << 20


def _check_chunks(keys: Any, array: Any, words: int) -> None:
    """Refuses an object that omits chunks worth more than ``MAX_MISSING`` bytes."""
    shape = [int(n) for n in array.chunk_layout.read_chunk.shape]
    chunk = shape[0]  # chunks split the first dimension only (see the specs)
    count = -(-words // chunk) if words else 0
    chunk_bytes = chunk * (shape[1] if len(shape) == 2 else 1) * array.dtype.numpy_dtype.itemsize
    if count * chunk_bytes <= MAX_MISSING:
        return  # even with every chunk missing it stands for no more: no need to list keys
    present = set()
    try:
        listed = keys.list().result()
    except Exception as exc:
        raise CorruptObjectError(f"object cannot be decoded: {exc}") from exc
    for key in listed:  # c/<i> (words layout) or c/<i>/0 (planes layout)
        index = key[2:].removesuffix(b"/0") if len(shape) == 2 else key[2:]
        if key.startswith(b"c/") and index.isdigit() and int(index) < count:
            present.add(int(index))
    missing = (count - len(present)) * chunk_bytes
    if missing > MAX_MISSING:
        raise CorruptObjectError(
            f"object lacks {count - len(present)} of its {count} chunks, which would decode "
            f"as {missing} bytes of zeros (git-theta stores every chunk): it is damaged or "
            "hostile; run `git theta fsck --fetch` to download a good copy"
        )


def memory_budget() -> int:
    """Bytes one decoded array may take: the machine's memory, or less under a limit on the
    process's address space (half of it: the rest of the process needs room too)."""
    import os
    import resource

    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        physical = 1 << 40
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        return min(physical, soft // 2)
    return physical
