"""Flax checkpoints (``flax.serialization.to_bytes``: msgpack), rebuilt byte-identical.

Flax writes its state dict as a msgpack map whose array leaves are msgpack extension
values: type 1 (an array) or 3 (a NumPy scalar), each holding a msgpack array of its shape,
its dtype's name and a ``bin`` of its C-order bytes. Arrays over 1 GiB are split by flax
into chunks, each such a value. This reader walks the msgpack itself (no JAX, no flax),
every length checked against the bytes left before it is read.

Each array is a tensor named by its path of map keys joined by ``/`` (``~`` and ``/`` in a
key written ``~0`` and ``~1``). Everything else in the file (keys, the arrays' shapes and
dtype names, plain values) is its skeleton, kept zlib-compressed in the manifest with the
offset where each array's bytes go; checkout splices the arrays back in. The skeleton holds
no array data, so one array changed stores one object.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from git_theta.errors import ManifestError, NotACheckpointError, ThetaError, UnsupportedError
from git_theta.formats.base import DAMAGED_MANIFEST as _DAMAGED
from git_theta.formats.base import Checkpoint, SharedFile, TensorData, read_words
from git_theta.tensors import DTYPES, MAX_DIMS, byte_view, numel

MAX_DEPTH = 100
MAX_VALUES = 1_000_000
MAX_SKELETON = 64 << 20  # bytes of the file that are not array data
_ARRAY_EXT = (1, 3)  # flax: ndarray, NumPy scalar
_COMPLEX_EXT = 2  # flax: a Python complex
_FLAX_DTYPES = {name: name for name in DTYPES}  # flax writes numpy's dtype names


@dataclass(frozen=True)
class _Array:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # in the file
    nbytes: int


class _Walk:
    """Reads the msgpack value tree front to back: keeps every byte but the arrays' data
    (the skeleton) and where each array's data sits."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size
        self.pos = 0
        self.skeleton = bytearray()
        self.arrays: list[_Array] = []
        self.values = 0

    def take(self, count: int) -> bytes:
        if count > self.size - self.pos:
            raise ValueError("the file is truncated")
        if len(self.skeleton) + count > MAX_SKELETON:
            raise ValueError(f"it holds more than {MAX_SKELETON >> 20} MiB besides its arrays")
        self.f.seek(self.pos)
        data = self.f.read(count)
        self.pos += count
        self.skeleton += data
        return data

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def value(self, path: list[str], depth: int) -> Any:
        """One value; returns it when it is a plain scalar or string (for map keys)."""
        self.values += 1
        if self.values > MAX_VALUES or depth > MAX_DEPTH:
            raise ValueError(f"it holds more than {MAX_VALUES} values or nests them too deeply")
        tag = self.take(1)[0]
        if tag <= 0x7F or tag >= 0xE0:
            return tag if tag <= 0x7F else tag - 0x100
        if 0x80 <= tag <= 0x8F:
            return self._map(tag & 0x0F, path, depth)
        if 0x90 <= tag <= 0x9F:
            return self._list(tag & 0x0F, path, depth)
        if 0xA0 <= tag <= 0xBF:
            return self._text(tag & 0x1F)
        fixed = {0xC0: None, 0xC2: False, 0xC3: True}
        if tag in fixed:
            return fixed[tag]
        if tag in (0xC4, 0xC5, 0xC6):  # bin 8/16/32
            return self.take(self.uint(1 << (tag - 0xC4)))
        if tag in (0xC7, 0xC8, 0xC9):  # ext 8/16/32
            length = self.uint(1 << (tag - 0xC7))
            return self._ext(length, path)
        if tag in (0xCA, 0xCB):
            return struct.unpack(">f" if tag == 0xCA else ">d", self.take(4 << (tag - 0xCA)))[0]
        if 0xCC <= tag <= 0xCF:
            return self.uint(1 << (tag - 0xCC))
        if 0xD0 <= tag <= 0xD3:
            return int.from_bytes(self.take(1 << (tag - 0xD0)), "big", signed=True)
        if 0xD4 <= tag <= 0xD8:  # fixext 1/2/4/8/16
            return self._ext(1 << (tag - 0xD4), path)
        if tag in (0xD9, 0xDA, 0xDB):
            return self._text(self.uint(1 << (tag - 0xD9)))
        if tag in (0xDC, 0xDD):
            return self._list(self.uint(2 << (tag - 0xDC)), path, depth)
        if tag in (0xDE, 0xDF):
            return self._map(self.uint(2 << (tag - 0xDE)), path, depth)
        raise ValueError(f"it holds the byte 0x{tag:02x}, which is not msgpack")

    def _text(self, length: int) -> str:
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("it holds a string that is not UTF-8") from None

    def _map(self, count: int, path: list[str], depth: int) -> None:
        if count > self.size - self.pos:
            raise ValueError("the file is truncated")
        for _ in range(count):
            key = self.value([], depth + 1)
            label = key if isinstance(key, str) else repr(key)
            self.value([*path, label.replace("~", "~0").replace("/", "~1")], depth + 1)

    def _list(self, count: int, path: list[str], depth: int) -> None:
        if count > self.size - self.pos:
            raise ValueError("the file is truncated")
        for i in range(count):
            self.value([*path, str(i)], depth + 1)

    def _ext(self, length: int, path: list[str]) -> None:
        kind = self.take(1)[0]
        end = self.pos + length
        if end > self.size:
            raise ValueError("the file is truncated")
        if kind == _COMPLEX_EXT:  # a Python complex: its msgpack [real, imag], kept as is
            self.take(length)
            return
        if kind not in _ARRAY_EXT:
            signed = kind - 256 if kind > 127 else kind  # msgpack extension types are int8
            raise ValueError(
                f"it holds a msgpack extension of type {signed}, which flax never writes"
            )
        # an array: [shape, dtype name, bin]
        if self.take(1) != b"\x93":
            raise ValueError("an array extension does not hold [shape, dtype, data]")
        shape_tag = self.take(1)[0]
        if 0x90 <= shape_tag <= 0x9F:
            dims = shape_tag & 0x0F
        elif shape_tag == 0xDC:
            dims = self.uint(2)
        else:
            raise ValueError("an array's shape is not a list")
        if dims > MAX_DIMS:
            raise ValueError(f"an array has more than {MAX_DIMS} dimensions")
        shape = []
        for _ in range(dims):
            dim = self.value([], 0)
            if type(dim) is not int or not 0 <= dim < 1 << 62:
                raise ValueError("an array's shape holds a value that is not a size")
            shape.append(dim)
        dtype_name = self.value([], 0)
        if dtype_name not in _FLAX_DTYPES:
            raise UnsupportedError(f"arrays of dtype `{dtype_name!s:.40}` are not supported")
        tag = self.take(1)[0]
        if tag not in (0xC4, 0xC5, 0xC6):
            raise ValueError("an array's data is not msgpack bin")
        nbytes = self.uint(1 << (tag - 0xC4))
        dtype = DTYPES[_FLAX_DTYPES[dtype_name]]
        if nbytes != numel(tuple(shape)) * dtype.itemsize or self.pos + nbytes != end:
            raise ValueError("an array's data does not match its shape and dtype")
        name = "/".join(path) or "array"
        self.arrays.append(_Array(name, dtype.name, tuple(shape), self.pos, nbytes))
        self.pos += nbytes  # the data is not skeleton


class FlaxFormat:
    """Reads and writes flax msgpack checkpoints."""

    name = "flax"
    writes_buffers = True  # its writer reads each tensor through memoryview

    def sniff(self, head: bytes, size: int) -> bool:
        """A msgpack map whose first bytes hold a flax array extension: ext 8/16/32 of type
        1 or 3 followed by the [shape, dtype, data] list marker."""
        if not head or not (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
            return False
        for tag, width in ((0xC7, 1), (0xC8, 2), (0xC9, 4)):
            at = head.find(bytes([tag]))
            while at != -1:
                kind_at = at + 1 + width
                if head[kind_at : kind_at + 2] in (b"\x01\x93", b"\x03\x93"):
                    return True
                at = head.find(bytes([tag]), at + 1)
        return False

    def read(self, path: Path, display_name: str) -> Checkpoint:
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                walk = _Walk(f, size)
                walk.value([], 0)
                if walk.pos != size:
                    raise ValueError("bytes follow its msgpack value")
        except ThetaError:
            raise
        except (ValueError, OSError, struct.error) as exc:
            raise NotACheckpointError(display_name, f"invalid flax msgpack file: {exc}") from exc
        names = [array.name for array in walk.arrays]
        if len(set(names)) != len(names):
            raise NotACheckpointError(display_name, "two arrays have the same path")
        shared = SharedFile(path)
        tensors, places = {}, []
        removed = 0  # array bytes before this one, which the skeleton does not hold
        for array in walk.arrays:
            places.append([array.name, array.offset - removed])
            removed += array.nbytes
            load = partial(
                read_words, shared, array.offset, array.nbytes, DTYPES[array.dtype].itemsize
            )
            tensors[array.name] = TensorData(array.dtype, array.shape, load)
        skeleton = base64.b64encode(zlib.compress(bytes(walk.skeleton), 9)).decode("ascii")
        fmt = {"name": self.name, "skeleton": skeleton, "arrays": places}
        return Checkpoint(fmt, tensors)

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        return [name for name, _ in _places(fmt, tensors, aliases)[1]]

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        skeleton, places = _places(fmt, tensors, aliases)
        done = 0
        for name, at in places:
            out.write(skeleton[done:at])
            out.write(byte_view(tensors[name].load()))
            done = at
        out.write(skeleton[done:])


def _places(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> tuple[bytes, list[tuple[str, int]]]:
    """The skeleton and where each array goes, checked: the skeleton read again (with the
    arrays' places) must give these tensors, so a file the manifest does not stand for is
    never written."""
    packed, places = fmt.get("skeleton"), fmt.get("arrays")
    if not isinstance(packed, str) or not isinstance(places, list) or aliases:
        raise ManifestError(f"flax manifest has no skeleton or arrays: {_DAMAGED}")
    try:
        inflater = zlib.decompressobj()
        skeleton = inflater.decompress(base64.b64decode(packed, validate=True), MAX_SKELETON + 1)
    except (ValueError, zlib.error):
        raise ManifestError(f"flax manifest's skeleton is not zlib data: {_DAMAGED}") from None
    if len(skeleton) > MAX_SKELETON or not inflater.eof:
        raise ManifestError(f"flax manifest's skeleton is too long or cut short: {_DAMAGED}")
    checked: list[tuple[str, int]] = []
    for entry in places:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and (checked[-1][1] if checked else 0) <= entry[1] <= len(skeleton)
        ):
            raise ManifestError(f"flax manifest has an invalid array place: {_DAMAGED}")
        checked.append((entry[0], entry[1]))
    if sorted(n for n, _ in checked) != sorted(tensors) or len(checked) != len(tensors):
        raise ManifestError(f"flax manifest's arrays and tensors disagree: {_DAMAGED}")
    _check_skeleton(skeleton, checked, tensors)
    return skeleton, checked


class _Spliced:
    """A skeleton with each array's data stood in by zeros of its size, as a file to walk."""

    def __init__(self, skeleton: bytes, places: list[tuple[str, int]], sizes: list[int]) -> None:
        self.parts: list[tuple[int, bytes | int]] = []
        done = offset = 0
        for (_, at), size in zip(places, sizes, strict=True):
            self.parts.append((offset, skeleton[done:at]))
            offset += at - done
            self.parts.append((offset, size))
            offset += size
            done = at
        self.parts.append((offset, skeleton[done:]))
        self.size = offset + len(skeleton) - done
        self.pos = 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, count: int) -> bytes:
        out = bytearray()
        for start, part in self.parts:
            length = part if isinstance(part, int) else len(part)
            lo, hi = max(self.pos, start), min(self.pos + count, start + length)
            if lo < hi:
                out += bytes(hi - lo) if isinstance(part, int) else part[lo - start : hi - start]
        self.pos += len(out)
        return bytes(out)


def _check_skeleton(
    skeleton: bytes, places: list[tuple[str, int]], tensors: Mapping[str, TensorData]
) -> None:
    sizes = [numel(tuple(tensors[n].shape)) * DTYPES[tensors[n].dtype].itemsize for n, _ in places]
    spliced = _Spliced(skeleton, places, sizes)
    try:
        walk = _Walk(spliced, spliced.size)  # type: ignore[arg-type]
        walk.value([], 0)
        ok = walk.pos == spliced.size
    except (ValueError, ThetaError, struct.error):
        ok = False
    found = [(a.name, a.dtype, a.shape) for a in walk.arrays] if ok else []
    expected = [(n, tensors[n].dtype, tuple(tensors[n].shape)) for n, _ in places]
    if found != expected:
        raise ManifestError(f"flax manifest's skeleton and tensors disagree: {_DAMAGED}")
