"""Content-addressed object store in git-lfs's own layout.

An object lives at ``<lfs dir>/objects/<oid[0:2]>/<oid[2:4]>/<oid>`` where ``oid`` is the
sha256 of its bytes, exactly where ``git lfs`` looks for it, so git-lfs can push and fetch
git-theta's objects. Writes go to a temporary file under ``<lfs dir>/tmp`` while hashing and
are renamed into place, so a crash never leaves a partial object; writing an object that
already exists is a no-op. Every read checks the sha256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from git_theta.errors import CorruptObjectError

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ObjectRef:
    """An object's name and size, as a manifest records it."""

    oid: str
    size: int


def valid_oid(oid: str) -> bool:
    """Whether ``oid`` is a lowercase hex sha256 (and so safe to use in a path)."""
    return len(oid) == 64 and set(oid) <= _HEX


class ObjectStore:
    """The objects of one repository, under ``lfs_dir`` (normally ``.git/lfs``)."""

    def __init__(self, lfs_dir: Path) -> None:
        self.lfs_dir = Path(lfs_dir)
        self.objects_dir = self.lfs_dir / "objects"
        self.tmp_dir = self.lfs_dir / "tmp"

    def path(self, oid: str) -> Path:
        """Where object ``oid`` lives (whether or not it is there)."""
        if not valid_oid(oid):
            raise CorruptObjectError(f"`{oid[:80]}` is not a valid object id")
        return self.objects_dir / oid[0:2] / oid[2:4] / oid

    def has(self, oid: str) -> bool:
        """Whether object ``oid`` is stored locally."""
        return self.path(oid).is_file()

    def put(self, chunks: Iterable[bytes | memoryview]) -> ObjectRef:
        """Store the concatenation of ``chunks``; returns its ref. Atomic and idempotent."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="theta-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            oid = digest.hexdigest()
            final = self.path(oid)
            if final.is_file() and final.stat().st_size == size:
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, final)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return ObjectRef(oid, size)

    def read(self, oid: str) -> bytes:
        """The bytes of object ``oid``, checked against its sha256.

        Raises FileNotFoundError when it is not stored, CorruptObjectError when its bytes
        do not hash to ``oid``.
        """
        data = self.path(oid).read_bytes()
        if hashlib.sha256(data).hexdigest() != oid:
            raise CorruptObjectError(
                f"object {oid[:12]}… in {self.objects_dir} is corrupt (its sha256 does not "
                "match): delete it and run `git theta checkout` to fetch a good copy"
            )
        return data
