"""A zip archive written front to back, for streams that cannot seek.

Only what ``torch.save`` archives need: stored (uncompressed) members whose data is known
before the member is written, so CRC and sizes go into the local header and no data
descriptor or seek is needed. Each member's data starts on an ``align``-byte boundary
(padding in the local header's extra field, as torch does, so readers can map the data);
with ``align=1`` no padding field is written.
ZIP64 records are written where sizes or offsets need them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on need ZIP64 records
_SENTINEL = 0xFFFFFFFF  # what a header holds where the ZIP64 record has the value
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_DOS_TIME = 0
_PAD_ID = 0x4246


class Writable(Protocol):
    """Where a zip is written: anything with ``write`` (a file, a pipe, a collector)."""

    def write(self, data: bytes | memoryview, /) -> int: ...


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

    def add(self, name: str, data: bytes | memoryview, crc: int | None = None) -> None:
        """One stored member; ``crc``: its data's CRC-32 when the caller knows it already."""
        view = memoryview(data).cast("B")
        size = view.nbytes
        crc = zlib.crc32(view) if crc is None else crc
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
        self._write(view)

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
