"""git's pkt-line framing: a 4-hex-digit length (including itself), then the payload.

``0000`` is a flush packet. Payloads are at most 65516 bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

MAX_PAYLOAD = 65516
FLUSH = b"0000"
_HEX = frozenset(b"0123456789abcdefABCDEF")


class ProtocolError(Exception):
    """Raised when the other side breaks the pkt-line framing."""


def read_packet(stream: BinaryIO) -> bytes | None:
    """One packet's payload, or None for a flush packet. Raises EOFError at end of input."""
    header = stream.read(4)
    if not header:
        raise EOFError
    if len(header) != 4:
        raise ProtocolError("truncated pkt-line header")
    if not all(c in _HEX for c in header):
        raise ProtocolError(f"invalid pkt-line header {header!r}")
    length = int(header, 16)
    if length == 0:
        return None
    if length < 4:
        raise ProtocolError(f"invalid pkt-line length {length}")
    payload = stream.read(length - 4)
    if len(payload) != length - 4:
        raise ProtocolError("truncated pkt-line payload")
    return payload


def read_text_list(stream: BinaryIO) -> list[str]:
    """Text packets (``key=value`` lines) up to the next flush, without their newlines."""
    lines = []
    while (packet := read_packet(stream)) is not None:
        lines.append(packet.decode("utf-8", "surrogateescape").rstrip("\n"))
    return lines


def read_content(stream: BinaryIO) -> Iterator[bytes]:
    """Binary packets up to the next flush."""
    while (packet := read_packet(stream)) is not None:
        yield packet


def write_packet(stream: BinaryIO, payload: bytes | memoryview) -> None:
    """Write one packet (``payload`` must fit in one)."""
    size = len(payload)
    if not size or size > MAX_PAYLOAD:
        raise ValueError("pkt-line payload must be 1 to 65516 bytes")
    stream.write(b"%04x" % (size + 4))
    stream.write(payload)


def write_text(stream: BinaryIO, line: str) -> None:
    """Write one text packet, newline-terminated."""
    write_packet(stream, line.encode("utf-8") + b"\n")


def write_flush(stream: BinaryIO) -> None:
    stream.write(FLUSH)
    stream.flush()


def write_content(stream: BinaryIO, source: BinaryIO) -> None:
    """Copy ``source`` to ``stream`` as packets of the largest size (no flush)."""
    while chunk := source.read(MAX_PAYLOAD):
        write_packet(stream, chunk)
