"""Content-addressed object store in git-lfs's layout, beside git-lfs's own objects.

An object lives at ``<lfs dir>/theta/objects/<oid[0:2]>/<oid[2:4]>/<oid>``, where ``oid`` is
the sha256 of its bytes: git-lfs's own layout, in a sibling of git-lfs's ``<lfs dir>/objects``.
Why not git-lfs's directory itself: ``git lfs prune`` keeps only the objects that LFS
pointers in commits name, and git-theta's commits hold manifests, so it would delete every
git-theta object there, pushed or not. Objects are linked into ``<lfs dir>/objects`` (a hard
link, no extra space) only for ``git lfs push --object-id`` to upload them; objects that
``git lfs fetch`` downloads there, and those earlier git-theta versions stored there, are
linked into the store when first looked up. Only ``git theta gc`` deletes objects here.

Writes go to a temporary file under ``<lfs dir>/tmp`` while hashing and are renamed into
place, so a crash never leaves a partial object. An object is *sound* when its bytes hash
to its oid; that is checked once per file (git-lfs checks what it downloads) and remembered by the file's size, times and
inode in ``<lfs dir>/theta/verified`` (a write to the file changes its modification time,
so a changed object is checked again; ``git theta fsck`` hashes every object). Writing an object whose stored copy is not sound
replaces that copy. A read-only store still serves the objects it has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from git_theta.errors import CorruptObjectError

_HEX = frozenset("0123456789abcdef")
TMP_PREFIX = "theta-"  # temporary files of git-theta in <lfs dir>/tmp
_READ = 1 << 20


@dataclass(frozen=True)
class ObjectRef:
    """An object's name and size, as a manifest records it."""

    oid: str
    size: int


@dataclass(frozen=True)
class StoredFile:
    """A file in the store's directories (an object, or a temporary file)."""

    path: Path
    size: int
    mtime: float


def valid_oid(oid: str) -> bool:
    """Whether ``oid`` is a lowercase hex sha256 (and so safe to use in a path)."""
    return len(oid) == 64 and set(oid) <= _HEX


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in pieces."""
    import hashlib  # here, not at the top: a checkout of sound objects never hashes them

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    # not the ctime: linking the object for git-lfs changes it, and no write leaves the
    # mtime as it was unless it is set back on purpose
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _oid_path(root: Path, oid: str) -> Path:
    if not valid_oid(oid):
        raise CorruptObjectError(f"`{oid[:80]}` is not a valid object id")
    return root / oid[0:2] / oid[2:4] / oid


class ObjectStore:
    """The objects of one repository, under ``lfs_dir`` (normally ``.git/lfs``)."""

    def __init__(self, lfs_dir: Path) -> None:
        self.lfs_dir = Path(lfs_dir)
        self.objects_dir = self.lfs_dir / "theta" / "objects"
        self.lfs_objects_dir = self.lfs_dir / "objects"  # git-lfs's own
        self.tmp_dir = self.lfs_dir / "tmp"
        self._verified_file = self.lfs_dir / "theta" / "verified"
        self._verified: dict[str, tuple[int, int, int]] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ where objects are

    def path(self, oid: str) -> Path:
        """Where object ``oid`` is: in the store, else git-lfs's copy when only that exists
        (a read-only store cannot take it in)."""
        own = _oid_path(self.objects_dir, oid)
        if own.is_file() or not self.lfs_path(oid).is_file():
            return own
        self._adopt(oid)
        return own if own.is_file() else self.lfs_path(oid)

    def lfs_path(self, oid: str) -> Path:
        """Where git-lfs keeps object ``oid``."""
        return _oid_path(self.lfs_objects_dir, oid)

    def has(self, oid: str) -> bool:
        """Whether object ``oid`` is local (in the store or in git-lfs's directory, where
        ``git lfs fetch`` puts what it downloads)."""
        return self.path(oid).is_file()

    def _adopt(self, oid: str) -> None:
        """Link git-lfs's copy of ``oid`` into the store (nothing when that cannot be done)."""
        with contextlib.suppress(OSError):
            _link_or_copy(self.lfs_path(oid), _oid_path(self.objects_dir, oid), self.tmp_dir)

    # ------------------------------------------------------------------ writing

    def put(self, chunks: Iterable[bytes | memoryview]) -> ObjectRef:
        """Store the concatenation of ``chunks``; returns its ref. Atomic; a sound copy
        already stored is kept, an unsound one is replaced. A write that the system refuses
        (a full disk, a read-only store) raises an OSError naming the store's directory."""
        try:
            return self._put(chunks)
        except OSError as exc:
            if exc.filename == str(self.lfs_dir):
                raise
            raise OSError(exc.errno, exc.strerror, str(self.lfs_dir)) from exc

    def _put(self, chunks: Iterable[bytes | memoryview]) -> ObjectRef:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        import hashlib

        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            oid = digest.hexdigest()
            ref = ObjectRef(oid, size)
            if self.is_sound(ref) and self._freshen(oid):
                os.unlink(tmp_name)
            else:  # not stored, not sound, or deleted meanwhile (by gc): this copy goes in
                final = _oid_path(self.objects_dir, oid)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, final)
                self._remember(oid, final)
                self._relink_lfs_copy(oid)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return ref

    def _freshen(self, oid: str) -> bool:
        """Give a kept object a new modification time, as if just written: ``git theta gc``
        spares objects younger than its expiry, so one that a running ``git add`` is about
        to name in a manifest is never deleted under it (git freshens its objects alike).
        False when the store's copy is gone (deleted meanwhile, or only git-lfs has it)."""
        own = _oid_path(self.objects_dir, oid)
        try:
            os.utime(own)
        except OSError:
            return False
        self._remember(oid, own)
        return True

    def _relink_lfs_copy(self, oid: str) -> None:
        """Make git-lfs's name for ``oid``, where there is one, the store's (sound) file: a
        copy replaced in the store must not stay damaged under git-lfs's name, which a push
        uploads from."""
        own = _oid_path(self.objects_dir, oid)
        twin = self.lfs_path(oid)
        with contextlib.suppress(OSError):
            if twin.exists() and not os.path.samefile(twin, own):
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.tmp_dir / f"{TMP_PREFIX}link-{os.getpid()}-{threading.get_ident()}"
                try:
                    os.link(own, tmp)
                    os.replace(tmp, twin)
                finally:
                    tmp.unlink(missing_ok=True)

    def accept_download(self, ref: ObjectRef) -> None:
        """Take in an object ``git lfs fetch`` has just downloaded, as sound: git-lfs checks
        each download's sha256 before it keeps it, so it is not hashed again here (nothing
        when it is not there, or not of its recorded size)."""
        own = _oid_path(self.objects_dir, ref.oid)
        twin = self.lfs_path(ref.oid)
        try:
            if twin.stat().st_size != ref.size:
                return
        except OSError:
            return
        if not own.is_file():
            self._adopt(ref.oid)
        if own.is_file() and os.path.samefile(own, twin):
            self._remember(ref.oid, own)

    # ------------------------------------------------------------------ checking

    def is_sound(self, ref: ObjectRef) -> bool:
        """Whether object ``ref`` is local with its recorded size and bytes that hash to its
        oid (hashed once per file; see the module's docstring)."""
        path = self.path(ref.oid)
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != ref.size:
            return False
        if self._known().get(ref.oid) == _signature(st):
            return True
        try:
            if file_sha256(path) != ref.oid:
                return False
        except OSError:
            return False
        self._remember(ref.oid, path)
        return True

    def check(self, ref: ObjectRef) -> str | None:
        """Hash object ``ref`` whatever is remembered about it (``git theta fsck``); None
        when it is sound, else what is wrong with it."""
        path = self.path(ref.oid)
        try:
            size = path.stat().st_size
        except OSError:
            return "is missing"
        problem = None
        if size != ref.size:
            problem = f"has {size} bytes, not the {ref.size} its manifest records"
        else:
            try:
                actual = file_sha256(path)
            except OSError as exc:
                actual, problem = "", f"cannot be read ({exc.strerror or exc})"
            if actual and actual != ref.oid:
                problem = f"is corrupt: its bytes hash to {actual[:12]}…, not to its id"
        if problem is None:
            self._remember(ref.oid, path)
        else:  # decayed in place, its times unchanged: hash it again from now on
            self._remember(ref.oid, None)
        return problem

    def set_aside(self, oid: str) -> Path | None:
        """Move a bad copy of ``oid`` out of the way so that a fetch can bring a good one
        (git-lfs downloads nothing it believes it has, so git-lfs's name for it goes too,
        unless that is a separate, sound copy). Returns where it went, for ``put_back``."""
        own = _oid_path(self.objects_dir, oid)
        twin = self.lfs_path(oid)
        with contextlib.suppress(OSError):
            if twin.is_file() and (
                (own.is_file() and os.path.samefile(twin, own)) or file_sha256(twin) != oid
            ):
                twin.unlink()
        if not own.is_file():
            return None
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, aside = tempfile.mkstemp(dir=self.tmp_dir, prefix=TMP_PREFIX)
        os.close(fd)
        os.replace(own, aside)
        os.utime(aside)  # a new temporary file: gc's expiry spares it
        return Path(aside)

    def put_back(self, oid: str, aside: Path) -> None:
        """Return a copy ``set_aside`` moved when no other copy came meanwhile; else drop it."""
        own = _oid_path(self.objects_dir, oid)
        with contextlib.suppress(OSError):
            if own.is_file():
                aside.unlink()
            else:
                os.replace(aside, own)

    def verify(self, oid: str) -> None:
        """Raise CorruptObjectError unless object ``oid`` is local and sound."""
        path = self.path(oid)
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size < 0 or not self.is_sound(ObjectRef(oid, size)):
            raise CorruptObjectError(
                f"object {oid[:12]}… in {self.objects_dir} is corrupt (its sha256 does not "
                "match): run `git theta fsck --fetch` to download a good copy"
            )

    def read(self, oid: str) -> bytes:
        """The bytes of object ``oid``, checked against its sha256.

        Raises FileNotFoundError when it is not stored, CorruptObjectError when its bytes
        do not hash to ``oid``.
        """
        data = self.path(oid).read_bytes()
        import hashlib

        if hashlib.sha256(data).hexdigest() != oid:
            self.verify(oid)  # raises, with the message
        return data

    def _known(self) -> dict[str, tuple[int, int, int]]:
        """oid -> signature of the file last found sound (read once per store)."""
        with self._lock:
            if self._verified is None:
                self._verified = {}
                try:
                    text = self._verified_file.read_text(encoding="ascii", errors="replace")
                except OSError:
                    text = ""
                for line in text.splitlines():
                    fields = line.split()
                    if (
                        len(fields) == 4
                        and valid_oid(fields[0])
                        and all(f.isdigit() for f in fields[1:])
                    ):
                        size, mtime, inode = (int(f) for f in fields[1:])
                        self._verified[fields[0]] = (size, mtime, inode)
            return self._verified

    def _remember(self, oid: str, path: Path | None) -> None:
        """Record that ``path`` (object ``oid``) is sound as it is now, or (``path`` None)
        that no copy is known to be; one appended line (the last line of an oid counts; a
        lost or torn line only costs hashing the object again)."""
        try:
            sig = _signature(path.stat()) if path is not None else (0, 0, 0)
        except OSError:
            return
        known = self._known()
        with self._lock:
            known[oid] = sig
            try:
                self._verified_file.parent.mkdir(parents=True, exist_ok=True)
                line = f"{oid} {' '.join(str(v) for v in sig)}\n".encode()
                fd = os.open(self._verified_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                pass  # a read-only store: checked again next time

    # ------------------------------------------------------------------ transfer, listing

    def export_to_lfs(self, oids: Iterable[str]) -> None:
        """Make objects visible to git-lfs (for ``git lfs push --object-id``)."""
        for oid in oids:
            target = self.lfs_path(oid)
            own = _oid_path(self.objects_dir, oid)
            if not own.is_file():
                continue
            if not target.is_file():
                _link_or_copy(own, target, self.tmp_dir)
            else:
                self._relink_lfs_copy(oid)  # upload the store's sound bytes, nothing else

    def objects(self) -> Iterator[tuple[str, StoredFile]]:
        """Every object in the store (not git-lfs's directory), as (oid, file)."""
        if not self.objects_dir.is_dir():
            return
        for first in sorted(self.objects_dir.iterdir()):
            if not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir():
                    continue
                for path in sorted(second.iterdir()):
                    if valid_oid(path.name):
                        try:  # gone meanwhile (a concurrent fsck --fetch): skipped
                            st = path.stat()
                        except FileNotFoundError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            yield path.name, StoredFile(path, st.st_size, st.st_mtime)

    def temporary_files(self) -> Iterator[StoredFile]:
        """git-theta's temporary files (objects being written, spooled input)."""
        if not self.tmp_dir.is_dir():
            return
        for path in sorted(self.tmp_dir.iterdir()):
            if path.name.startswith(TMP_PREFIX):
                try:  # renamed into place meanwhile: skipped
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield StoredFile(path, st.st_size, st.st_mtime)

    def delete(self, oid: str, lfs_copy: bool, older_than: float | None = None) -> int | None:
        """Delete object ``oid`` from the store, and git-lfs's name for the same file when
        ``lfs_copy`` (only when it is that very file, a hard link we made); returns the bytes
        freed, or None when it was kept because it was modified at or after ``older_than``
        (a concurrent ``git add`` storing it again). Raises OSError when it cannot be deleted."""
        own = _oid_path(self.objects_dir, oid)
        try:
            st = own.stat()
        except FileNotFoundError:
            return 0
        if older_than is not None and st.st_mtime >= older_than:
            return None
        removed = 1
        twin = self.lfs_path(oid)
        if lfs_copy and twin.is_file() and os.path.samefile(twin, own):
            twin.unlink()
            removed += 1
        own.unlink()
        return st.st_size if st.st_nlink <= removed else 0

    def forget_deleted(self) -> None:
        """Rewrite the verified-objects record without the objects no longer stored."""
        known = self._known()
        lines = []
        for oid, sig in sorted(known.items()):
            if _oid_path(self.objects_dir, oid).is_file():
                lines.append(f"{oid} {' '.join(str(v) for v in sig)}\n")
        try:
            fd, tmp = tempfile.mkstemp(dir=self._verified_file.parent, prefix=TMP_PREFIX)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.writelines(lines)
            os.replace(tmp, self._verified_file)
        except OSError:
            pass


def _link_or_copy(src: Path, dst: Path, tmp_dir: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes: a hard link, else an atomic copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        return
    except OSError:
        pass  # another file system, or links not allowed: copy
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, _READ)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
