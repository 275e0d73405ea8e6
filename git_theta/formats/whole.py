"""Files in no checkpoint format, stored whole: one ``uint8`` tensor, ``data``, of the file's
bytes, so the file comes back byte-identical (and a changed copy may be stored as an update
of the one before, like any tensor).

No file is detected as this format: ``filter.clean`` takes it for a file under a tracked
pattern that no format claims and that is not small UTF-8 text (which git keeps as text).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from git_theta.errors import ManifestError
from git_theta.formats.base import DAMAGED_MANIFEST, Checkpoint, SharedFile, TensorData, read_range
from git_theta.tensors import byte_view

# bytes written at a time (memory holds one piece of the file beyond its tensor)
_PIECE = 16 << 20
# a file no format claims and at most this big, valid UTF-8 without NUL bytes, stays text
TEXT_MAX_BYTES = 1 << 20


def is_small_text(data: bytes) -> bool:
    """Whether ``data`` is text git-theta keeps in git as it is: at most ``TEXT_MAX_BYTES``,
    valid UTF-8, no NUL byte."""
    if len(data) > TEXT_MAX_BYTES or b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class WholeFile:
    name = "file"
    writes_buffers = True  # its writer reads each tensor through memoryview

    def sniff(self, head: bytes, size: int) -> bool:
        return False  # never detected: the fallback for what no format claims

    def read(self, path: Path, display_name: str) -> Checkpoint:
        size = path.stat().st_size
        shared = SharedFile(path)
        return Checkpoint(
            {"name": self.name},
            {"data": TensorData("uint8", (size,), lambda: read_range(shared, 0, size))},
        )

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        return ["data"]

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        data = tensors.get("data")
        if (
            set(tensors) != {"data"}
            or data is None
            or data.dtype != "uint8"
            or len(data.shape) != 1
        ):
            raise ManifestError(f"a whole file is one uint8 tensor `data`: {DAMAGED_MANIFEST}")
        words = data.load()
        view = byte_view(words)
        for start in range(0, len(view), _PIECE):
            out.write(view[start : start + _PIECE])
