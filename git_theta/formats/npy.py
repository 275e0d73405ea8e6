"""NumPy ``.npy`` files and ``.npz`` archives, rebuilt byte-identical.

A ``.npy`` file is the magic ``\\x93NUMPY``, a version, the header's length, the header (a
Python dict literal with ``descr``, ``fortran_order`` and ``shape``, padded with spaces),
then the array's bytes. The header is kept verbatim (base64) in the manifest and the array
is one tensor, ``array``:

- little-endian numbers and bools are stored as they are; big-endian ones are stored
  little-endian and swapped back when written;
- an array in Fortran order is stored with its shape reversed (its bytes are the C-order
  bytes of the transposed array);
- any other fixed-size dtype (strings, datetimes, structured records, ``V2`` bfloat16) is
  stored as its bytes, a ``uint8`` tensor.

Object arrays hold pickles: they are refused, so reading a file never runs code.

An ``.npz`` file is a zip of ``.npy`` members, as ``np.savez`` (stored) and
``np.savez_compressed`` (deflated) write them with Python's zipfile; each member's array is
a tensor named as ``np.load`` names it (the member name without ``.npy``). The manifest
records each member's header and zip fields; checkout writes Python zipfile's layout with
them (``zipstream.PyZipStream``), which ``git add`` checks gives back the file's bytes. When
it does not (another zip writer, another deflate), the members' fields are recorded as
``np.savez`` sets them and the file comes back with the same arrays in that layout.
"""

from __future__ import annotations

import ast
import base64
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from git_theta.errors import ManifestError, NotACheckpointError, ThetaError, UnsupportedError
from git_theta.formats.base import DAMAGED_MANIFEST as _DAMAGED
from git_theta.formats.base import Checkpoint, SharedFile, TensorData, read_range
from git_theta.tensors import MAX_DIMS, byte_view, numel, word_dtype
from git_theta.zipstream import Comparison, PyMember, PyZipStream, member_data_offset

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 16  # numpy itself reads headers of at most 10000 bytes by default
_CANONICAL = {
    ("f", 2): "float16",
    ("f", 4): "float32",
    ("f", 8): "float64",
    ("i", 1): "int8",
    ("i", 2): "int16",
    ("i", 4): "int32",
    ("i", 8): "int64",
    ("u", 1): "uint8",
    ("u", 2): "uint16",
    ("u", 4): "uint32",
    ("u", 8): "uint64",
    ("b", 1): "bool",
    ("c", 8): "complex64",
    ("c", 16): "complex128",
}
_SAVEZ_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, as np.savez dates its members
_SAVEZ_ATTR = 0o600 << 16
_DEFLATE_MAX_RATIO = 1032  # deflate never inflates further than this


@dataclass(frozen=True)
class _Array:
    """An ``.npy`` header taken apart: its bytes, the array's numpy dtype and shape, and how
    it is stored (canonical dtype name and shape, byte-swapped or not)."""

    header: bytes
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    stored_dtype: str
    stored_shape: tuple[int, ...]
    swap: bool

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.dtype.itemsize


def _parse(head: bytes, where: str) -> _Array:
    """The header at the start of ``head`` (which holds at least the whole header)."""
    if head[:6] != MAGIC or len(head) < 10:
        raise ValueError(f"{where} is not a .npy array (no \\x93NUMPY magic)")
    major = head[6]
    if head[7] != 0:
        raise ValueError(f"{where} has .npy version {major}.{head[7]}, which is not known")
    if major == 1:
        (length,), start = struct.unpack("<H", head[8:10]), 10
    elif major in (2, 3) and len(head) >= 12:
        (length,), start = struct.unpack("<I", head[8:12]), 12
    else:
        raise ValueError(f"{where} has .npy version {major}.{head[7]}, which is not known")
    if length > MAX_HEADER:
        raise ValueError(f"{where} has a header of {length} bytes, more than {MAX_HEADER}")
    if len(head) < start + length:
        raise ValueError(f"{where} ends inside its header")
    raw = head[start : start + length]
    try:
        value = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeError):
        raise ValueError(f"{where} has a header that is not a Python literal") from None
    if not isinstance(value, dict) or set(value) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"{where} has a header without exactly descr, fortran_order, shape")
    shape, fortran = value["shape"], value["fortran_order"]
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) or len(shape) > MAX_DIMS:
        raise ValueError(f"{where} has an invalid fortran_order or shape")
    if not all(type(d) is int and 0 <= d < 1 << 62 for d in shape):
        raise ValueError(f"{where} has a shape that is not sizes")
    try:
        dtype = np.dtype(value["descr"])
    except (TypeError, ValueError, SyntaxError, RecursionError):  # numpy parses "a,b" itself
        raise ValueError(f"{where} has a dtype numpy does not know") from None
    if dtype.hasobject:
        raise UnsupportedError(
            f"{where} is an object array (its data is a pickle, which git-theta never "
            "loads): save it with a numeric dtype"
        )
    name = None
    if dtype.fields is None and dtype.subdtype is None:
        name = _CANONICAL.get((dtype.kind, dtype.itemsize))
    if name is None:  # kept as its bytes
        stored: tuple[str, tuple[int, ...]] = ("uint8", (numel(shape) * dtype.itemsize,))
    else:
        stored = (name, tuple(reversed(shape)) if fortran else shape)
    swap = name is not None and dtype.byteorder == ">"
    return _Array(head[: start + length], dtype, shape, *stored, swap)


def _words(array: _Array, data: np.ndarray) -> np.ndarray:
    """The stored (canonical, little-endian) words of the array's bytes ``data``."""
    word = word_dtype(np.dtype(array.stored_dtype).itemsize)
    if array.swap:
        data = np.frombuffer(data, dtype=array.dtype).byteswap()
    return np.frombuffer(data, dtype=np.uint8).view(word)


def _file_bytes(array: _Array, words: bytearray | np.ndarray) -> memoryview:
    """The array's bytes as the file holds them, from its stored words."""
    if array.swap:
        little = array.dtype.newbyteorder("<")
        return np.frombuffer(words, dtype=little).byteswap().data.cast("B")
    return byte_view(words)


def _encoded(header: bytes) -> str:
    return base64.b64encode(header).decode("ascii")


def _decoded(text: Any, where: str) -> _Array:
    """A header the manifest records, checked as at ``git add``."""
    try:
        if not isinstance(text, str):
            raise ValueError("not text")
        raw = base64.b64decode(text, validate=True)
        array = _parse(raw, where)
    except (ValueError, ThetaError) as exc:
        raise ManifestError(
            f"numpy manifest has an invalid header for {where} ({exc}): {_DAMAGED}"
        ) from None
    if len(array.header) != len(raw):
        raise ManifestError(f"numpy manifest has bytes after the header of {where}: {_DAMAGED}")
    return array


def _check(name: str, array: _Array, tensors: Mapping[str, TensorData]) -> TensorData:
    tensor = tensors.get(name)
    if tensor is None or (tensor.dtype, tuple(tensor.shape)) != (
        array.stored_dtype,
        array.stored_shape,
    ):
        raise ManifestError(f"numpy manifest's header and tensor `{name}` disagree: {_DAMAGED}")
    return tensor


class NumpyFormat:
    """Reads and writes ``.npy`` files and ``.npz`` archives."""

    name = "numpy"
    writes_buffers = True  # its writer reads each tensor through memoryview

    def sniff(self, head: bytes, size: int) -> bool:
        """An ``.npy`` file by its magic; a zip whose first member is named ``*.npy``."""
        if head[:6] == MAGIC:
            return True
        if head[:4] != b"PK\x03\x04" or len(head) < 30:
            return False
        name_len = int.from_bytes(head[26:28], "little")
        return head[30 : 30 + name_len].endswith(b".npy")

    def read(self, path: Path, display_name: str) -> Checkpoint:
        try:
            with open(path, "rb") as f:
                if f.read(6) == MAGIC:
                    return self._read_npy(f, path, display_name)
                return _NpzReader(f, path, display_name).read()
        except ThetaError:
            raise
        except zipfile.BadZipFile as exc:
            raise NotACheckpointError(
                display_name, f"truncated or corrupt .npz archive ({exc})"
            ) from exc
        except (
            ValueError,
            KeyError,
            OSError,
            EOFError,
            OverflowError,
            zlib.error,
            struct.error,
            NotImplementedError,  # zipfile: a zip version or compression method it lacks
            RuntimeError,  # zipfile: an encrypted member
        ) as exc:
            raise NotACheckpointError(display_name, f"invalid NumPy file: {exc}") from exc

    def _read_npy(self, f: BinaryIO, path: Path, display_name: str) -> Checkpoint:
        f.seek(0)
        array = _parse(f.read(12 + MAX_HEADER), "the file")
        size = path.stat().st_size
        start = len(array.header)
        if start + array.nbytes != size:
            short = start + array.nbytes > size
            raise ValueError("the file is truncated" if short else "bytes follow the array")
        shared = SharedFile(path)

        def load() -> np.ndarray:
            return _words(array, read_range(shared, start, array.nbytes))

        tensor = TensorData(array.stored_dtype, array.stored_shape, load)
        return Checkpoint({"name": self.name, "npy": _encoded(array.header)}, {"array": tensor})

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        return [name for name, _, _ in _members(fmt, tensors, aliases)]

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        members = _members(fmt, tensors, aliases)
        if "npy" in fmt:
            ((name, array, _),) = members
            out.write(array.header)
            out.write(_file_bytes(array, tensors[name].load()))
            return
        archive = PyZipStream(out)
        for name, array, member in members:
            assert member is not None
            archive.add(member, [array.header, _file_bytes(array, tensors[name].load())])
        archive.close()


def _members(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> list[tuple[str, _Array, PyMember | None]]:
    """(tensor name, header, zip member) in file order, checked against the tensors."""
    if aliases:
        raise ManifestError(f"numpy manifest has aliases: {_DAMAGED}")
    if "npy" in fmt:
        array = _decoded(fmt["npy"], "the array")
        _check("array", array, tensors)
        if set(tensors) != {"array"}:
            raise ManifestError(f"numpy manifest has tensors besides `array`: {_DAMAGED}")
        return [("array", array, None)]
    entries = fmt.get("npz")
    if not isinstance(entries, list):
        raise ManifestError(f"numpy manifest has neither `npy` nor `npz`: {_DAMAGED}")
    found: list[tuple[str, _Array, PyMember | None]] = []
    for entry in entries:
        member = _member(entry)
        name = member.name[: -len(".npy")]
        array = _decoded(entry["npy"], f"member `{member.name}`")
        _check(name, array, tensors)
        found.append((name, array, member))
    if sorted(name for name, _, _ in found) != sorted(tensors) or len(found) != len(tensors):
        raise ManifestError(f"numpy manifest's members and tensors disagree: {_DAMAGED}")
    return found


_MEMBER_KEYS = {"member", "npy", "method", "time", "date", "attr", "system", "zip64"}


def _member(entry: Any) -> PyMember:
    ok = isinstance(entry, dict) and set(entry) == _MEMBER_KEYS
    if ok:
        name, method, zip64 = entry["member"], entry["method"], entry["zip64"]
        ints = [entry[k] for k in ("time", "date", "attr", "system")]
        ok = (
            isinstance(name, str)
            and name.endswith(".npy")
            and 0 < len(name) <= 0xFFFF
            and method in (0, 8)
            and isinstance(zip64, bool)
            and all(type(v) is int for v in ints)
            and all(0 <= v <= 0xFFFF for v in ints[:2])
            and 0 <= ints[2] <= 0xFFFFFFFF
            and 0 <= ints[3] <= 0xFF
        )
    if not ok:
        raise ManifestError(f"numpy manifest has an invalid member {str(entry)[:80]}: {_DAMAGED}")
    time, date, attr, system = ints
    return PyMember(name, method, time, date, attr, system, zip64)


class _NpzReader:
    """Takes an ``.npz`` archive apart and finds the zip fields that rebuild it."""

    def __init__(self, f: BinaryIO, path: Path, display_name: str) -> None:
        self.f, self.path, self.display_name = f, path, display_name
        self.size = path.stat().st_size

    def _read(self, offset: int, length: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(length)

    def read(self) -> Checkpoint:
        archive = zipfile.ZipFile(self.f)
        infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
        shared = SharedFile(self.path)
        tensors: dict[str, TensorData] = {}
        arrays: list[tuple[zipfile.ZipInfo, _Array]] = []
        for info in infos:
            where = f"member `{info.filename}`"
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{where} is not an array (.npy)")
            if info.flag_bits & 1 or info.compress_type not in (0, 8):
                raise UnsupportedError(
                    f"{self.display_name}: {where} is encrypted or compressed other than "
                    "with deflate: save the arrays with np.savez or np.savez_compressed"
                )
            if info.compress_type == zipfile.ZIP_DEFLATED and (
                info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024
            ):
                raise ValueError(f"{where} claims more bytes than deflate can give")
            with archive.open(info) as member:
                array = _parse(member.read(12 + MAX_HEADER), where)
            if len(array.header) + array.nbytes != info.file_size:
                raise ValueError(f"{where} holds {info.file_size} bytes, not header and array")
            name = info.filename[: -len(".npy")]
            if name in tensors:
                raise ValueError(f"{where} appears twice")
            tensors[name] = TensorData(
                array.stored_dtype, array.stored_shape, self._loader(shared, info, array)
            )
            arrays.append((info, array))
        if not arrays:
            raise ValueError("the archive holds no arrays")
        entries = self._layout(arrays, exact=True)
        if entries is None:
            entries = self._layout(arrays, exact=False)
        return Checkpoint({"name": "numpy", "npz": entries}, tensors)

    def _loader(self, shared: SharedFile, info: zipfile.ZipInfo, array: _Array) -> Any:
        skip = len(array.header)
        if info.compress_type == zipfile.ZIP_STORED:
            start = member_data_offset(self.f, info) + skip
            if start + array.nbytes > self.size:
                raise ValueError("the file is truncated")
            return lambda: _words(array, read_range(shared, start, array.nbytes))
        path = self.path

        def inflate() -> np.ndarray:  # zipfile checks the member's CRC-32 at its end
            with zipfile.ZipFile(path) as archive, archive.open(info) as member:
                member.read(skip)
                data = member.read(array.nbytes + 1)
            if len(data) != array.nbytes:
                raise NotACheckpointError(self.display_name, f"`{info.filename}` is cut short")
            return _words(array, np.frombuffer(data, dtype=np.uint8))

        return inflate

    def _layout(
        self, arrays: list[tuple[zipfile.ZipInfo, _Array]], exact: bool
    ) -> list[dict[str, Any]] | None:
        """Each member's entry: its fields as the file has them when Python zipfile's
        layout with them gives back the file's bytes (checked: stored data is skipped,
        deflated data compressed again and compared), else (``exact`` False) as np.savez
        sets them."""
        entries, members = [], []
        for info, array in arrays:
            if exact:
                local = self._read(info.header_offset + 28, 2)
                time = info.date_time
                member = PyMember(
                    info.filename,
                    info.compress_type,
                    time[3] << 11 | time[4] << 5 | time[5] // 2,
                    (time[0] - 1980) << 9 | time[1] << 5 | time[2],
                    info.external_attr,
                    info.create_system,
                    int.from_bytes(local, "little") >= 20,
                )
            else:
                member = PyMember(
                    info.filename, info.compress_type, 0, _SAVEZ_DATE, _SAVEZ_ATTR, 3, True
                )
            members.append((info, array, member))
            entries.append(
                {
                    "member": member.name,
                    "npy": _encoded(array.header),
                    "method": member.method,
                    "time": member.time,
                    "date": member.date,
                    "attr": member.attr,
                    "system": member.system,
                    "zip64": member.zip64,
                }
            )
        if not exact:
            return entries
        check = Comparison(self._read, self.size)
        archive = PyZipStream(check)
        with zipfile.ZipFile(self.path) as source:
            for info, _, member in members:
                if not check.same:
                    return None
                if member.method == zipfile.ZIP_STORED:
                    archive.add(member, info.file_size, info.CRC)
                else:  # deflate again: the bytes must be the file's
                    with source.open(info) as data:
                        archive.add(member, [data.read()])
        archive.close()
        return entries if check.matches() else None
