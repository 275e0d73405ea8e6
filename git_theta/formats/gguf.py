"""GGUF files (llama.cpp), rebuilt byte-identical.

A GGUF file is a header (magic ``GGUF``, version, counts, key-value metadata, one info per
tensor: name, dimensions, ggml type, offset), padding to the alignment, then the tensors'
data, each at its recorded offset, zero-padded to the alignment. The header, padding
included, is stored as one ``uint8`` tensor, ``gguf:header`` (metadata such as a tokenizer
vocabulary can be megabytes; a tensor is stored once and deduplicated like any other). Each
tensor is one tensor of the manifest: float and integer ggml types as their dtype, with the
ggml dimensions reversed into a C-order shape; a quantized type (Q4_0, Q8_0, the K-quants…)
as its raw blocks, a ``uint8`` tensor, its type named in the format section.

The header is walked here, every count and length checked against the bytes that are left
before anything is read or allocated; the ``gguf`` package (imported only by this format)
gives the ggml types' names and block sizes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from git_theta.errors import ManifestError, NotACheckpointError, ThetaError, UnsupportedError
from git_theta.formats.base import DAMAGED_MANIFEST as _DAMAGED
from git_theta.formats.base import Checkpoint, SharedFile, TensorData, read_range, read_words
from git_theta.tensors import DTYPES, MAX_DIMS, byte_view

HEADER = "gguf:header"
MAX_HEADER_BYTES = 1 << 30  # metadata and tensor infos larger than this are refused
_PLAIN = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_PLAIN |= {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_PAGE = 16 << 20


@dataclass(frozen=True)
class _Info:
    name: str
    dims: tuple[int, ...]  # ggml order: the first dimension varies fastest
    ggml_type: str
    offset: int  # from the start of the data section
    nbytes: int
    dtype: str  # stored dtype
    shape: tuple[int, ...]  # stored shape


@dataclass(frozen=True)
class _Header:
    infos: list[_Info]  # in the order of their data
    data_start: int


class _Short(ValueError):
    """The bytes given end inside the header (the file may, or only what was read)."""


class _Cursor:
    """Reads a header front to back; every read is checked against what is left."""

    def __init__(self, data: bytes | memoryview, where: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.where = where

    def take(self, count: int) -> memoryview:
        if count < 0 or self.pos + count > len(self.data):
            raise _Short(f"{self.where} ends inside its header")
        piece = self.data[self.pos : self.pos + count]
        self.pos += count
        return piece

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        try:
            return bytes(self.take(length)).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.where} has a name that is not UTF-8") from None

    def skip_value(self, kind: int) -> Any:
        """Walks past one value; returns it when it is a uint32 (the alignment is one)."""
        if kind in _SCALARS:
            raw = self.take(_SCALARS[kind])
            return int.from_bytes(raw, "little") if kind == _UINT32 else None
        if kind == _STRING:
            self.take(self.unpack("<Q"))
            return None
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            least = _SCALARS.get(item, 8)  # a string or array item is at least its length
            if count * least > len(self.data) - self.pos:
                raise ValueError(f"{self.where} has an array longer than the file")
            if item in _SCALARS:
                self.take(count * _SCALARS[item])
            else:
                for _ in range(count):
                    self.skip_value(item)
            return None
        raise ValueError(f"{self.where} has a metadata value of unknown type {kind}")


def _ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml type number -> (name, block size in elements, block size in bytes)."""
    import gguf  # the format's own dependency, imported only here

    return {int(t): (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType}


def _parse(data: bytes | memoryview, size: int, where: str) -> _Header:
    """The header at the start of ``data`` (which holds all of it) of a ``size``-byte file."""
    cursor = _Cursor(data, where)
    if bytes(cursor.take(4)) != b"GGUF":
        raise ValueError(f"{where} is not a GGUF file")
    version = cursor.unpack("<I")
    if version not in (2, 3):
        raise UnsupportedError(f"{where}: GGUF version {version} is not supported (2 and 3 are)")
    tensor_count, kv_count = cursor.unpack("<Q"), cursor.unpack("<Q")
    if (tensor_count + kv_count) * 12 > size:
        raise ValueError(f"{where} claims more metadata and tensors than its size holds")
    alignment = 32
    for _ in range(kv_count):
        key = cursor.string()
        value = cursor.skip_value(cursor.unpack("<I"))
        if key == "general.alignment":
            if value is None or not 0 < value <= 1 << 20 or value & (value - 1):
                raise ValueError(f"{where} has an invalid general.alignment")
            alignment = value
    types = _ggml_types()
    raw = []
    for _ in range(tensor_count):
        name = cursor.string()
        ndims = cursor.unpack("<I")
        if ndims > MAX_DIMS:
            raise ValueError(f"{where}: tensor `{name}` has {ndims} dimensions")
        dims = tuple(cursor.unpack("<Q") for _ in range(ndims))
        kind, offset = cursor.unpack("<I"), cursor.unpack("<Q")
        if kind not in types:
            raise UnsupportedError(f"{where}: tensor `{name}` has ggml type {kind}, not known")
        raw.append((name, dims, types[kind], offset))
    data_start = -(-cursor.pos // alignment) * alignment
    infos = []
    for name, dims, (type_name, block, block_bytes), offset in raw:
        count = 1
        for dim in dims:
            count *= dim
        if count % block or (dims and dims[0] % block) or offset % alignment:
            raise ValueError(f"{where}: tensor `{name}` does not fit its type's blocks")
        nbytes = count // block * block_bytes
        if type_name in _PLAIN:
            stored: tuple[str, tuple[int, ...]] = (_PLAIN[type_name], tuple(reversed(dims)))
        else:
            stored = ("uint8", (nbytes,))
        infos.append(_Info(name, dims, type_name, offset, nbytes, *stored))
    infos.sort(key=lambda info: info.offset)
    end = 0
    for info in infos:
        if info.offset < end:
            raise ValueError(f"{where}: tensor `{info.name}` overlaps the one before it")
        end = info.offset + info.nbytes
    padded = -(-(data_start + end) // alignment) * alignment
    if size not in (data_start + end, padded):  # the last tensor padded to the alignment, or not
        raise ValueError(
            f"{where} is truncated" if size < padded else f"{where} has bytes after its last tensor"
        )
    names = [info.name for info in infos]
    if len(set(names)) != len(names) or HEADER in names:
        raise ValueError(f"{where} names a tensor twice (or `{HEADER}`)")
    return _Header(infos, data_start)


def _read_header(path: Path, size: int) -> _Header:
    """The header, read 1 MiB first and more only while it goes on (up to 1 GiB)."""
    want = 1 << 20
    with open(path, "rb") as f:
        while True:
            f.seek(0)
            data = f.read(min(size, want))
            try:
                return _parse(data, size, "the file")
            except _Short:
                if len(data) == size or want >= MAX_HEADER_BYTES:
                    raise
                want *= 4


def _zeros_between(file: SharedFile, start: int, stop: int) -> bool:
    for at in range(start, stop, _PAGE):
        if read_range(file, at, min(_PAGE, stop - at)).any():
            return False
    return True


class GgufFormat:
    """Reads and writes GGUF files."""

    name = "gguf"
    writes_buffers = True  # its writer reads each tensor through memoryview

    def sniff(self, head: bytes, size: int) -> bool:
        return head[:4] == b"GGUF"

    def read(self, path: Path, display_name: str) -> Checkpoint:
        size = path.stat().st_size
        try:
            header = _read_header(path, size)
        except ThetaError:
            raise
        except RecursionError:
            raise NotACheckpointError(
                display_name, "invalid GGUF file: its arrays nest too deeply"
            ) from None
        except (ValueError, struct.error, OverflowError) as exc:
            raise NotACheckpointError(display_name, f"invalid GGUF file: {exc}") from exc
        shared = SharedFile(path)
        layout, tensors = [], {}
        tensors[HEADER] = TensorData(
            "uint8", (header.data_start,), lambda: read_range(shared, 0, header.data_start)
        )
        position = header.data_start
        for info in header.infos:
            start = header.data_start + info.offset
            if not _zeros_between(shared, position, start):
                raise NotACheckpointError(
                    display_name, f"the padding before tensor `{info.name}` is not zeros"
                )
            position = start + info.nbytes
            load = partial(read_words, shared, start, info.nbytes, DTYPES[info.dtype].itemsize)
            tensors[info.name] = TensorData(info.dtype, info.shape, load)
            layout.append([info.name, info.ggml_type])
        if not _zeros_between(shared, position, size):
            raise NotACheckpointError(display_name, "the bytes after its last tensor are not zeros")
        fmt = {"name": self.name, "tensors": layout, "size": size}
        return Checkpoint(fmt, tensors)

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        return [HEADER, *(name for name, _ in _layout(fmt, tensors, aliases))]

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        _layout(fmt, tensors, aliases)
        header_bytes = tensors[HEADER].load()
        header = _parse(byte_view(header_bytes), fmt["size"], "the manifest's GGUF header")
        recorded = [(name, kind) for name, kind in fmt["tensors"]]
        if [(i.name, i.ggml_type) for i in header.infos] != recorded or any(
            (tensors[i.name].dtype, tuple(tensors[i.name].shape)) != (i.dtype, i.shape)
            for i in header.infos
        ):
            raise ManifestError(f"gguf manifest's header and tensors disagree: {_DAMAGED}")
        if header.data_start != len(header_bytes):
            raise ManifestError(f"gguf manifest's header has the wrong length: {_DAMAGED}")
        out.write(byte_view(header_bytes))
        position = header.data_start
        for info in header.infos:
            _pad(out, header.data_start + info.offset - position)
            out.write(byte_view(tensors[info.name].load()))
            position = header.data_start + info.offset + info.nbytes
        _pad(out, fmt["size"] - position)


def _pad(out: BinaryIO, count: int) -> None:
    for start in range(0, count, _PAGE):
        out.write(bytes(min(_PAGE, count - start)))


def _layout(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> list[tuple[str, str]]:
    layout, size = fmt.get("tensors"), fmt.get("size")
    ok = isinstance(layout, list) and type(size) is int and size >= 0 and not aliases
    ok = ok and all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(v, str) for v in e)
        for e in layout  # type: ignore[union-attr]
    )
    if not ok or HEADER not in tensors:
        raise ManifestError(f"gguf manifest has an invalid layout: {_DAMAGED}")
    names = [name for name, _ in layout]  # type: ignore[union-attr]
    if sorted([HEADER, *names]) != sorted(tensors) or len(set(names)) != len(names):
        raise ManifestError(f"gguf manifest's layout and tensors disagree: {_DAMAGED}")
    header = tensors[HEADER]
    if header.dtype != "uint8" or len(header.shape) != 1:
        raise ManifestError(f"gguf manifest's header is not bytes: {_DAMAGED}")
    return [(name, kind) for name, kind in layout]  # type: ignore[union-attr]
