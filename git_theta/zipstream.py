"""Zip archives written front to back, for streams that cannot seek.

Only what ``torch.save`` archives need: stored (uncompressed) members. Two layouts:

- ``ZipStream``, git-theta's own: data whose CRC is known before the member is written, so
  CRC and sizes go into the local header and no data descriptor is needed;
- ``TorchZipStream``, the one ``torch.save`` writes (PyTorch's miniz writer): zero CRC and
  sizes in the local header, a data descriptor after the data, a ZIP64 end record always.

Each member's data starts on an ``align``-byte boundary (padding in the local header's
extra field, as torch does, so readers can map the data). ZIP64 records are written where
sizes or offsets need them.

Both write to a ``Skeleton`` instead of a file when given member sizes in place of data:
it keeps every byte that is not member data, with its offset, so a reader can check that
a layout rebuilds a file's headers exactly without rewriting the data.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on need ZIP64 records
_SENTINEL = 0xFFFFFFFF  # what a header holds where the ZIP64 record has the value
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_DOS_TIME = 0
_PAD_ID = 0x4246


class Writable(Protocol):
    """Where a zip is written: anything with ``write`` (a file, a pipe, a collector)."""

    def write(self, data: bytes | memoryview, /) -> int: ...


class Skeleton:
    """Stands in for the output: keeps what is written with its offset, skips member data."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, bytes]] = []
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        if self.parts and self.parts[-1][0] + len(self.parts[-1][1]) == self.size:
            offset, before = self.parts.pop()
            self.parts.append((offset, before + bytes(data)))
        else:
            self.parts.append((self.size, bytes(data)))
        self.size += len(data)
        return len(data)

    def skip(self, size: int) -> None:
        self.size += size

    def matches(self, read: Callable[[int, int], bytes], size: int) -> bool:
        """Whether a file of ``size`` bytes, read by ``read(offset, length)``, holds exactly
        these bytes where they were written."""
        if size != self.size:
            return False
        return all(read(offset, len(part)) == part for offset, part in self.parts)


def member_data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a member's data starts: after its local header, whose name and extra field
    lengths may differ from the central directory's."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"member `{info.filename}` has a bad local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class Streamed:
    """A member's data in pieces, written in order as they are taken (each before the next:
    a piece may be overwritten by the next), and its size. Its CRC-32 goes beside it."""

    __slots__ = ("pieces", "nbytes")

    def __init__(self, pieces: Iterable[memoryview], nbytes: int) -> None:
        self.pieces = pieces
        self.nbytes = nbytes


Data = bytes | memoryview | int | Streamed


def _sized(data: Data, crc: int | None) -> tuple[memoryview | int | Streamed, int]:
    """A member's data as bytes (or its size alone, or its pieces, which need the CRC-32),
    and its size."""
    if isinstance(data, (int, Streamed)):
        if crc is None:
            raise TypeError("a member given by its size or in pieces needs its CRC-32")
        return data, data if isinstance(data, int) else data.nbytes
    view = memoryview(data).cast("B")
    return view, view.nbytes


def _member(out: Writable, data: memoryview | int | Streamed) -> int:
    """Writes a member's data (or skips it: ``data`` is its size, ``out`` a Skeleton or a
    Comparison)."""
    if isinstance(data, int):
        if not isinstance(out, (Skeleton, Comparison)):
            raise TypeError("member sizes stand in for data only when checking a layout")
        out.skip(data)
        return data
    if isinstance(data, Streamed):
        written = 0
        for piece in data.pieces:
            out.write(piece)
            written += piece.nbytes
        if written != data.nbytes:  # the headers already promised data.nbytes
            raise ValueError(f"a member's pieces held {written} bytes, not {data.nbytes}")
        return written
    out.write(data)
    return data.nbytes


@dataclass
class _Entry:
    name: bytes
    crc: int
    size: int
    offset: int


class ZipStream:
    """Writes members one after another, then the central directory on ``close()``."""

    def __init__(self, out: Writable, align: int = 64) -> None:
        self.out = out
        self.align = align
        self.offset = 0
        self.entries: list[_Entry] = []

    def _write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.offset += len(data)

    def add(self, name: str, data: Data, crc: int | None = None) -> None:
        """One stored member; ``crc``: its data's CRC-32 when the caller knows it already
        (required when ``data`` is a size, for a Skeleton)."""
        data, size = _sized(data, crc)
        if crc is None:
            crc = zlib.crc32(data)  # type: ignore[arg-type]  # data is bytes when crc is None
        encoded = name.encode("utf-8")
        big = size >= ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        if self.align > 1:  # a padding field (id "FB", as torch writes) aligns the data
            header_len = 30 + len(encoded) + len(extra) + 4
            pad = (-(self.offset + header_len)) % self.align
            extra += struct.pack("<HH", _PAD_ID, pad) + b"\0" * pad
        shown = _SENTINEL if big else size
        self.entries.append(_Entry(encoded, crc, size, self.offset))
        self._write(
            struct.pack(
                "<4sHHHHHIIIHH",
                b"PK\x03\x04",
                45 if big else 20,
                0x800,
                0,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                shown,
                shown,
                len(encoded),
                len(extra),
            )
        )
        self._write(encoded + extra)
        self.offset += _member(self.out, data)

    def close(self) -> None:
        """The central directory and end records."""
        start = self.offset
        for e in self.entries:
            fields = []
            if e.size >= ZIP64_LIMIT:
                fields += [e.size, e.size]
            if e.offset >= ZIP64_LIMIT:
                fields.append(e.offset)
            extra = (
                struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            )
            size = _SENTINEL if e.size >= ZIP64_LIMIT else e.size
            offset = _SENTINEL if e.offset >= ZIP64_LIMIT else e.offset
            self._write(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    45 if fields else 20,
                    45 if fields else 20,
                    0x800,
                    0,
                    _DOS_TIME,
                    _DOS_DATE,
                    e.crc,
                    size,
                    size,
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    offset,
                )
            )
            self._write(e.name + extra)
        cd_size = self.offset - start
        count = len(self.entries)
        zip64 = count >= 0xFFFF or start >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT
        if zip64:
            end64 = self.offset
            self._write(
                struct.pack(
                    "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, start
                )
            )
            self._write(struct.pack("<4sIQI", b"PK\x06\x07", 0, end64, 1))
        self._write(
            struct.pack(
                "<4sHHHHIIH",
                b"PK\x05\x06",
                0,
                0,
                0xFFFF if zip64 else count,
                0xFFFF if zip64 else count,
                _SENTINEL if zip64 else cd_size,
                _SENTINEL if zip64 else start,
                0,
            )
        )


_MINIZ_LIMIT = 0xFFFFFFFF  # miniz's own bound for ZIP64 fields (not patched by tests)
_MADE_BY_UNIX_30 = 0x031E  # "version made by" in miniz's ZIP64 end record


def _zip64_fields(size: int, offset: int, local: bool = False) -> bytes:
    """miniz's ZIP64 extra field: the sizes when the size needs it (in a local header the
    compressed size is still 0 then), the offset when it needs it."""
    fields = [size, 0 if local else size] if size >= _MINIZ_LIMIT else []
    if offset >= _MINIZ_LIMIT:
        fields.append(offset)
    return struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""


def combine_hash(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit words (how torch folds the records' CRC-32s into
    ``serialization_id``)."""
    return (seed ^ (value + 0x9E3779B9 + (seed << 6) + (seed >> 2))) & 0xFFFFFFFFFFFFFFFF


class TorchZipStream:
    """The layout ``torch.save`` writes, member for member: every name under ``prefix/``,
    a local header with zero CRC and sizes, padding (``FB`` then ``Z`` bytes) so data starts
    on an ``align`` boundary, the data, a data descriptor, and at the end the central
    directory, a ZIP64 end record and locator, and the end record."""

    def __init__(self, out: Writable, prefix: str, align: int) -> None:
        self.out = out
        self.prefix = prefix
        self.align = align
        self.offset = 0
        self.entries: list[_Entry] = []
        self.combined_crc = 0  # the records' CRC-32s so far, folded as torch does

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def add(self, name: str, data: Data, crc: int | None = None) -> None:
        """One record ``prefix/name``. ``crc`` may be left out when ``data`` is bytes: the
        descriptor follows the data, so it is computed as the data is written."""
        encoded = f"{self.prefix}/{name}".encode()
        data, size = _sized(data, crc)
        header_offset = self.offset
        zip64 = _zip64_fields(size, header_offset, local=True)
        start = header_offset + 30 + len(encoded) + len(zip64) + 4
        pad = (-start) % self.align
        extra = zip64 + struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
        flags = 0x808 if size else 0x800  # an empty record has no data descriptor
        self._write(
            struct.pack(
                "<4sHHHHHIIIHH", b"PK\x03\x04", 0, flags, 0, 0, 0, 0, 0, 0, len(encoded), len(extra)
            )
            + encoded
            + extra
        )
        self.offset += _member(self.out, data)
        if crc is None:
            crc = zlib.crc32(data)  # type: ignore[arg-type]  # data is bytes here
        if size:
            descriptor = "<4sIQQ" if zip64 else "<4sIII"
            self._write(struct.pack(descriptor, b"PK\x07\x08", crc, size, size))
        self.entries.append(_Entry(encoded, crc, size, header_offset))
        if size:  # torch folds in the CRC-32 of each record that has data
            self.combined_crc = combine_hash(self.combined_crc, crc)

    def close(self) -> None:
        """The central directory and end records."""
        start = self.offset
        for e in self.entries:
            extra = _zip64_fields(e.size, e.offset)
            size = min(e.size, _MINIZ_LIMIT)
            self._write(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    0,
                    0,
                    0x808 if e.size else 0x800,
                    0,
                    0,
                    0,
                    e.crc,
                    size,
                    size,
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    min(e.offset, _MINIZ_LIMIT),
                )
                + e.name
                + extra
            )
        cd_size, count, end64 = self.offset - start, len(self.entries), self.offset
        self._write(
            struct.pack(
                "<4sQHHIIQQQQ",
                b"PK\x06\x06",
                44,
                _MADE_BY_UNIX_30,
                45,
                0,
                0,
                count,
                count,
                cd_size,
                start,
            )
            + struct.pack("<4sIQI", b"PK\x06\x07", 0, end64, 1)
            + struct.pack(
                "<4sHHHHIIH",
                b"PK\x05\x06",
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(cd_size, _MINIZ_LIMIT),
                min(start, _MINIZ_LIMIT),
                0,
            )
        )


class Comparison:
    """Stands in for the output: compares what is written with a file's bytes at the same
    offsets as it goes (member data may be skipped), holding nothing."""

    def __init__(self, read: Callable[[int, int], bytes], size: int) -> None:
        self._read = read
        self._size = size
        self.offset = 0
        self.same = True

    def write(self, data: bytes | memoryview, /) -> int:
        length = memoryview(data).nbytes
        if self.same and self._read(self.offset, length) != data:
            self.same = False
        self.offset += length
        return length

    def skip(self, size: int) -> None:
        self.offset += size

    def matches(self) -> bool:
        return self.same and self.offset == self._size


PY_ZIP64_LIMIT = (1 << 31) - 1  # Python's zipfile needs ZIP64 fields past 2 GiB


@dataclass(frozen=True)
class PyMember:
    """What Python's zipfile writes of one member besides its data (the knobs a writer such
    as ``np.savez`` sets): name, method (0 stored, 8 deflated), DOS time and date, external
    attributes, the system that made it, and whether the local header's sizes were forced
    into a ZIP64 field."""

    name: str
    method: int
    time: int
    date: int
    attr: int
    system: int
    zip64: bool


class PyZipStream:
    """The layout Python's ``zipfile`` writes to a seekable file: sizes and CRC in the local
    header (written after the data, in place), no data descriptor, a central directory, and
    ZIP64 records past 2 GiB. A member's data is given whole (deflated members are compressed
    here, with zlib's default level, raw deflate, as zipfile does)."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.offset = 0
        self.entries: list[tuple[PyMember, bytes, int, int, int, int]] = []

    def _write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.offset += memoryview(data).nbytes

    def add(
        self,
        member: PyMember,
        pieces: list[bytes | memoryview] | int,
        crc: int | None = None,
        compressed: int | None = None,
    ) -> None:
        """One member from its data ``pieces``; or, for a Skeleton, its size (with its
        ``crc`` and ``compressed`` size, when deflated)."""
        body: list[bytes | memoryview] | None
        if isinstance(pieces, int):
            if crc is None or (member.method == 8 and compressed is None):
                raise TypeError("a member given by its size needs its CRC-32 and stored size")
            size, body = pieces, None
            stored = compressed if member.method == 8 else size
        else:
            size = sum(memoryview(p).nbytes for p in pieces)
            crc = 0
            for piece in pieces:
                crc = zlib.crc32(piece, crc)
            if member.method == 8:
                deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
                chunks = [deflate.compress(piece) for piece in pieces]
                chunks.append(deflate.flush())
                body = [chunk for chunk in chunks if chunk]
            else:
                body = list(pieces)
            stored = sum(memoryview(p).nbytes for p in body)
        assert stored is not None
        encoded, flags = _py_name(member.name)
        zip64 = member.zip64 or size > PY_ZIP64_LIMIT or stored > PY_ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, stored) if zip64 else b""
        version = 45 if zip64 else 20
        shown_size, shown_stored = (_SENTINEL, _SENTINEL) if zip64 else (size, stored)
        header_offset = self.offset
        self._write(
            struct.pack(
                "<4sBBHHHHIIIHH",
                b"PK\x03\x04",
                version,
                0,
                *_py_fields(member, flags, crc),
                shown_stored,
                shown_size,
                len(encoded),
                len(extra),
            )
            + encoded
            + extra
        )
        if body is None:
            self.offset += _member(self.out, stored)
        else:
            for piece in body:
                self._write(piece)
        self.entries.append((member, encoded, crc, size, stored, header_offset))

    def close(self) -> None:
        start = self.offset
        for member, encoded, crc, size, stored, header_offset in self.entries:
            fields = [size, stored] if size > PY_ZIP64_LIMIT or stored > PY_ZIP64_LIMIT else []
            if header_offset > PY_ZIP64_LIMIT:
                fields.append(header_offset)
            extra = (
                struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            )
            big = size > PY_ZIP64_LIMIT or stored > PY_ZIP64_LIMIT
            version = 45 if fields or member.zip64 else 20
            _, flags = _py_name(member.name)
            self._write(
                struct.pack(
                    "<4sBBBBHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    version,
                    member.system,
                    version,
                    0,
                    *_py_fields(member, flags, crc),
                    _SENTINEL if big else stored,
                    _SENTINEL if big else size,
                    len(encoded),
                    len(extra),
                    0,
                    0,
                    0,
                    member.attr,
                    _SENTINEL if header_offset > PY_ZIP64_LIMIT else header_offset,
                )
                + encoded
                + extra
            )
        count, cd_size = len(self.entries), self.offset - start
        if count > 0xFFFF or start > PY_ZIP64_LIMIT or cd_size > PY_ZIP64_LIMIT:
            end64 = self.offset
            self._write(
                struct.pack(
                    "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, start
                )
                + struct.pack("<4sIQI", b"PK\x06\x07", 0, end64, 1)
            )
        self._write(
            struct.pack(
                "<4sHHHHIIH",
                b"PK\x05\x06",
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(cd_size, _SENTINEL),
                min(start, _SENTINEL),
                0,
            )
        )


def _py_fields(member: PyMember, flags: int, crc: int) -> tuple[int, int, int, int, int]:
    """The fields local and central headers share: flags, method, time, date, CRC-32."""
    return flags, member.method, member.time, member.date, crc


def _py_name(name: str) -> tuple[bytes, int]:
    """A member name as zipfile encodes it: ASCII, else UTF-8 with flag bit 11."""
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), 0x800
