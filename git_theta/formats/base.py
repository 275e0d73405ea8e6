"""What every checkpoint format provides: a reader to tensors and a writer back to bytes."""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

# the fix a writer's ManifestError names: what a manifest holds was checked and is wrong
DAMAGED_MANIFEST = (
    "the manifest is damaged or was edited by hand (check the file out from a good commit)"
)


# the paths of files no other process changes while they are read (the filters' private
# copies of what git hands them): their tensors are mapped, not copied
_PRIVATE: set[str] = set()


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[None]:
    """Readers map the tensors of the file at ``path`` (which nothing may change or
    truncate meanwhile) instead of reading them into memory, while this lasts."""
    _PRIVATE.add(str(path))
    try:
        yield
    finally:
        _PRIVATE.discard(str(path))


class SharedFile:
    """A read-only descriptor shared by a checkpoint's tensor loaders; it is closed when the
    last loader holding it is gone (or on ``close()``)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.close = weakref.finalize(self, os.close, self.fd)
        self.private = str(path) in _PRIVATE


# a range this big of a private file is mapped: smaller ones cost less to read than to map
MAP_MIN_BYTES = 1 << 20


def read_range(file: SharedFile, offset: int, size: int) -> np.ndarray:
    """``size`` bytes of ``file`` from ``offset`` in a new array (positional reads, so
    threads can share the file). Readers load tensors this way rather than mapping the whole
    file: memory then holds only the tensors being processed. A large range of a private
    file (``private_file``) is mapped copy-on-write instead: its pages are the page cache's,
    not a copy (a file another process may truncate is never mapped: reading a page past
    its new end would kill this process)."""
    if file.private and size >= MAP_MIN_BYTES:
        mapped = _mapped_range(file, offset, size)
        if mapped is not None:
            return mapped
    buffer = np.empty(size, dtype=np.uint8)
    view = buffer.data
    done = 0
    while done < size:
        got = os.preadv(file.fd, [view[done:]], offset + done)
        if got == 0:
            raise EOFError(f"file ends {size - done} bytes early")
        done += got
    return buffer


def _mapped_range(file: SharedFile, offset: int, size: int) -> np.ndarray | None:
    """The range mapped, or None where the file cannot be mapped (some file systems refuse):
    it is read instead."""
    import mmap

    short = offset + size - os.fstat(file.fd).st_size
    if short > 0:
        raise EOFError(f"file ends {min(short, size)} bytes early")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(file.fd, offset + size - start, access=mmap.ACCESS_COPY, offset=start)
    except (OSError, ValueError):
        return None
    return np.frombuffer(mapped, np.uint8, size, offset - start)  # unmapped with the array


def read_words(file: SharedFile, offset: int, size: int, itemsize: int) -> np.ndarray:
    """``size`` bytes of ``file`` from ``offset`` as words of ``itemsize`` bytes (the
    canonical form ``TensorData.load`` returns)."""
    from git_theta.tensors import word_dtype

    return read_range(file, offset, size).view(word_dtype(itemsize))


@dataclass
class TensorData:
    """One tensor of a checkpoint, its bytes loaded on demand.

    ``load()`` returns the tensor's canonical bytes as a contiguous 1-D array of unsigned
    words (``tensors.word_dtype``); readers return views into the mapped file where they can.
    A checkout hands the writer of a format that sets ``writes_buffers`` tensors that may
    load as a plain ``bytearray`` of the same bytes instead (decoded without numpy).
    """

    dtype: str
    shape: tuple[int, ...]
    load: Callable[[], bytearray | np.ndarray]
    crc32: int | None = None  # CRC-32 of the canonical bytes, when known without loading
    # checkout's alternative to ``load`` for a large tensor, given to the writer of a format
    # that sets ``writes_pieces``: the canonical bytes in pieces, in order, each overwritten
    # by the next; verified as they go (a mismatch raises before the last is given)
    pieces: Callable[[], Iterable[memoryview]] | None = None


def byte_pieces(tensor: TensorData) -> Iterable[memoryview]:
    """A tensor's canonical bytes for a writer that writes them in order: its pieces when
    checkout streams it, else the whole tensor as one piece. Write each piece before taking
    the next."""
    if tensor.pieces is not None:
        return tensor.pieces()
    from git_theta.tensors import byte_view

    return (byte_view(tensor.load()),)


@dataclass
class Checkpoint:
    """A checkpoint taken apart: tensors in file order, aliases, and what the writer needs."""

    format: dict[str, Any]
    tensors: dict[str, TensorData]
    aliases: dict[str, str] = field(default_factory=dict)


class Format(Protocol):
    """A checkpoint format. ``name`` is what manifests record in ``format.name``.

    A format may also set ``writes_buffers = True`` when its ``write`` takes each tensor's
    bytes through ``memoryview`` (``tensors.byte_view``) and never as a numpy array: a
    checkout then decodes its tensors into plain buffers, without loading numpy. Without it
    (a plugin's format), ``load()`` gives arrays of words. One that also sets
    ``writes_pieces = True`` takes a tensor's ``pieces`` when given (``byte_pieces``), so a
    large tensor streams to git as it is decoded.
    """

    name: str

    def sniff(self, head: bytes, size: int) -> bool:
        """Whether a file of ``size`` bytes starting with ``head`` (up to 64 KiB) is in this format."""
        ...

    def read(self, path: Path, display_name: str) -> Checkpoint:
        """Take the checkpoint at ``path`` apart; errors name ``display_name``."""
        ...

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        """Names of the stored tensors in the order ``write`` will load them (so they can be
        decoded ahead, in parallel)."""
        ...

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        """Rebuild the checkpoint into ``out``, front to back (``out`` need not seek)."""
        ...
