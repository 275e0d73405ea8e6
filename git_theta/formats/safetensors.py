"""safetensors files, rebuilt byte-identical.

Layout: u64 little-endian header length N, N bytes of JSON header (``dtype``, ``shape``,
``data_offsets`` per tensor, optional ``__metadata__``), then the tensors' bytes, which are
already canonical (little-endian, C order). The header is kept verbatim in the manifest, so
the rebuilt file has exactly the original bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta.errors import ManifestError, NotACheckpointError, ThetaError
from git_theta.formats.base import DAMAGED_MANIFEST as _DAMAGED
from git_theta.formats.base import Checkpoint, SharedFile, TensorData, byte_pieces, read_words
from git_theta.tensors import dtype as get_dtype
from git_theta.tensors import from_safetensors, nbytes

_MAX_HEADER = 100 << 20


def _parse_header(text: str) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """(name, canonical dtype, shape, begin, end) per tensor, in the order of their data."""
    header = json.loads(text)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ValueError("`__metadata__` is not an object")
            continue
        dt = from_safetensors(info["dtype"]).name
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if any(d < 0 for d in shape) or end - begin != nbytes(dt, shape):
            raise ValueError(f"tensor `{name}` has data_offsets that do not fit its shape")
        entries.append((name, dt, shape, begin, end))
    entries.sort(key=lambda e: (e[3], e[4]))
    return entries


class _BadHeader(ValueError):
    """A header that does not parse; the message says why."""


def _entries(text: str) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """``_parse_header``, its failures (whatever raised them) as ``_BadHeader``."""
    try:
        return _parse_header(text)
    except (ValueError, KeyError, TypeError, RecursionError, ThetaError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _BadHeader(reason) from exc


def _misplaced(entries: list[tuple[str, str, tuple[int, ...], int, int]]) -> tuple[str | None, int]:
    """The first tensor that does not start where the one before it ends (the first at 0),
    if any; and where the last one ends."""
    expected = 0
    for name, _, _, begin, end in entries:
        if begin != expected:
            return name, expected
        expected = end
    return None, expected


def _manifest_entries(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """The header a manifest records, checked as the safetensors library would check the
    file it makes (one object, tensors laid end to end from 0) and against the manifest's
    tensors; raises ManifestError, so a file its own library refuses is never written."""
    text = fmt.get("header")
    if not isinstance(text, str):
        raise ManifestError(f"safetensors manifest has no `header`: {_DAMAGED}")
    try:
        entries = _entries(text)
    except _BadHeader as bad:
        raise ManifestError(
            f"safetensors manifest has an invalid header ({bad}): {_DAMAGED}"
        ) from None
    misplaced, _ = _misplaced(entries)
    if misplaced is not None:
        raise ManifestError(
            f"safetensors manifest: tensor `{misplaced}` overlaps or leaves a gap: {_DAMAGED}"
        )
    if {e[0] for e in entries} != set(tensors) or aliases:
        raise ManifestError(f"safetensors manifest's header and tensors disagree: {_DAMAGED}")
    return entries


def _load(file: SharedFile, start: int, dt: str, shape: tuple[int, ...]) -> np.ndarray:
    return read_words(file, start, nbytes(dt, shape), get_dtype(dt).itemsize)


class SafetensorsFormat:
    """Reads and writes safetensors files."""

    name = "safetensors"
    writes_buffers = True  # its writer reads each tensor through memoryview
    writes_pieces = True  # and takes a large one in pieces (``TensorData.pieces``)

    def sniff(self, head: bytes, size: int) -> bool:
        if len(head) < 10:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"

    def read(self, path: Path, display_name: str) -> Checkpoint:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise NotACheckpointError(display_name, "the file is truncated")
            (n,) = struct.unpack("<Q", prefix)
            if n > min(size - 8, _MAX_HEADER):
                raise NotACheckpointError(display_name, f"invalid safetensors header length {n}")
            raw = f.read(n)
            try:
                text = raw.decode("utf-8")
                entries = _entries(text)
            except ValueError as exc:  # not UTF-8, or a _BadHeader
                raise NotACheckpointError(
                    display_name, f"invalid safetensors header: {exc}"
                ) from exc
            data_start = 8 + n
            misplaced, expected = _misplaced(entries)
            if misplaced is not None:
                raise NotACheckpointError(
                    display_name, f"tensor `{misplaced}` data overlaps another or leaves a gap"
                )
            if data_start + expected != size:
                reason = (
                    "the file is truncated"
                    if data_start + expected > size
                    else ("the file has bytes after its last tensor")
                )
                raise NotACheckpointError(display_name, reason)
        shared = SharedFile(path)
        tensors: dict[str, TensorData] = {}
        for name, dt, shape, begin, _ in entries:
            tensors[name] = TensorData(
                dt,
                shape,
                lambda s=data_start + begin, d=dt, sh=shape: _load(shared, s, d, sh),  # type: ignore[misc]
            )
        return Checkpoint({"name": self.name, "header": text}, tensors)

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        """Names of the tensors in the order ``write`` loads them (their order in the file)."""
        return [e[0] for e in _manifest_entries(fmt, tensors, aliases)]

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        entries = _manifest_entries(fmt, tensors, aliases)
        raw = fmt["header"].encode("utf-8")
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for name, dt, shape, _, _ in entries:
            record = tensors[name]
            if (record.dtype, record.shape) != (dt, shape):
                raise ManifestError(f"safetensors header and manifest disagree on `{name}`")
            for piece in byte_pieces(record):
                out.write(piece)
