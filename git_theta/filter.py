"""clean() and smudge(): the one place that composes formats, codec, store and manifest.

clean (``git add``): checkpoint file -> format reader -> per tensor: identity hash; a tensor
whose hash matches one in the previous manifest of the path reuses its record; any other is
encoded and stored -> manifest bytes.

smudge (checkout): manifest -> every object present (else the caller's ``fetch``)? -> decode
each tensor, verify its identity hash -> format writer -> checkpoint bytes.

Pure composition: the store, the settings and the way to fetch are passed in; nothing here
finds a repository, runs git or installs anything.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn, cast

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta import codec, formats, updates
from git_theta.codec import memory_budget
from git_theta.config import Config
from git_theta.errors import (
    CorruptObjectError,
    HashMismatchError,
    ManifestError,
    NotACheckpointError,
    ObjectMissingError,
    ThetaError,
)
from git_theta.formats import TensorData
from git_theta.formats.whole import TEXT_MAX_BYTES, is_small_text
from git_theta.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    TensorRecord,
    chain,
    parse_if_manifest,
)
from git_theta.pool import Pool, Task
from git_theta.store import ObjectStore
from git_theta.tensors import as_words, byte_view, content_hash, content_hasher, identity_hash
from git_theta.tensors import nbytes as tensor_nbytes


@dataclass(frozen=True)
class _Reuse:
    """The records of the manifest being replaced: those with a BLAKE3 by it, the others
    (schemas 1 and 2) by identity hash, and the (dtype, shape) pairs among them."""

    by_blake3: dict[str, TensorRecord]
    by_hash: dict[str, TensorRecord]
    kinds: frozenset[tuple[str, tuple[int, ...]]]
    manifest: Manifest | None


def _previous_records(previous: bytes | None) -> _Reuse:
    """What the manifest being replaced offers for reuse (nothing if there is none)."""
    try:
        manifest = parse_if_manifest(previous) if previous else None
    except ManifestError:
        manifest = None
    records = list(manifest.tensors.values()) if manifest else []
    by_blake3 = {r.blake3: r for r in records if r.blake3 is not None}
    by_hash = {r.hash: r for r in records if r.blake3 is None}
    kinds = frozenset((r.dtype, tuple(r.shape)) for r in records)
    return _Reuse(by_blake3, by_hash, kinds, manifest)


def _store_tensor(
    name: str,
    tensor: TensorData,
    reuse: _Reuse,
    store: ObjectStore,
    config: Config,
    overrides: dict[str, TensorRecord],
) -> TensorRecord:
    given = overrides.get(name)
    if given is not None:
        if (given.dtype, tuple(given.shape)) != (tensor.dtype, tuple(tensor.shape)):
            raise ManifestError(
                f"tensor `{name}` is {tensor.dtype}{list(tensor.shape)} in the file, but its "
                f"update gives {given.dtype}{list(given.shape)}"
            )
        return given
    words = as_words(tensor.load(), tensor.dtype)
    digest = check = None
    if (tensor.dtype, tuple(tensor.shape)) in reuse.kinds:
        # likely unchanged: hash first, and encode only if it did change. A record with a
        # BLAKE3 is found by it (no sha256 needed), one without by its identity hash
        known = None
        if reuse.by_blake3:
            check = content_hash(tensor.dtype, tensor.shape, words)
            known = reuse.by_blake3.get(check)
        if known is None and reuse.by_hash:
            digest = identity_hash(tensor.dtype, tensor.shape, words)
            known = reuse.by_hash.get(digest)
        if (
            known is not None
            and (known.dtype, known.shape) == (tensor.dtype, tensor.shape)
            and all(store.is_sound(obj) for obj in known.objects)
        ):
            return known  # unchanged, and its objects are here and sound
    base = reuse.manifest.tensors.get(name) if reuse.manifest is not None else None
    return updates.store_tensor(
        tensor.dtype, tensor.shape, words, store, config, digest, base, check, tensor.crc32
    )


# a file stored whole is held in memory with its encoding: at most this share of the budget
WHOLE_MAX_FRACTION = 0.25


def _small_text(src: Path) -> bytes | None:
    """The content of the file at ``src`` when it is small UTF-8 text (kept in git as it
    is), else None."""
    if src.stat().st_size > TEXT_MAX_BYTES:
        return None
    data = src.read_bytes()
    return data if is_small_text(data) else None


# (tensors done, tensors in all, bytes done, bytes in all)
Progress = Callable[[int, int, int, int], None]


def clean(
    src: Path,
    previous: bytes | None,
    store: ObjectStore,
    config: Config,
    name: str = "<stdin>",
    progress: Progress | None = None,
    overrides: dict[str, TensorRecord] | None = None,
    note: Callable[[str], None] | None = None,
) -> bytes:
    """The manifest for the checkpoint at ``src`` (``name``: its path, for messages).

    ``previous`` is the blob the path had in the index (the manifest being replaced), used to
    reuse unchanged tensors. A file that already is a manifest is returned in canonical form.
    ``overrides``: records to take, by tensor name, in place of what the file holds (records
    of updates the user passed, already stored; same dtype and shape).

    A file no format claims is never refused: small UTF-8 text is returned as it is (git keeps
    it as text); anything else is stored whole (``formats.whole``). ``note`` is told which.
    """
    with open(src, "rb") as f:
        first = f.read(1)
    if first == b"{" and src.stat().st_size <= MAX_MANIFEST_BYTES:
        head = src.read_bytes()
        existing = parse_if_manifest(head)
        if existing is not None:
            return existing.to_bytes()
    try:
        fmt = formats.detect(src, name)
    except formats.Unclaimed:
        text = _small_text(src)
        if text is not None:
            if note is not None:
                note(f"{name} is in no checkpoint format: kept in git as text")
            return text
        size = src.stat().st_size
        if size > WHOLE_MAX_FRACTION * memory_budget():  # held whole while it is stored
            raise NotACheckpointError(
                name,
                f"it is in no checkpoint format, and at {size} bytes too big to store whole "
                "here: track it with `git lfs track` instead of git-theta",
            ) from None
        if note is not None:
            note(f"{name} is in no checkpoint format: stored whole, as one object")
        fmt = formats.get("file")
    checkpoint = fmt.read(src, name)
    reuse = _previous_records(previous)
    sizes = {n: tensor_nbytes(t.dtype, t.shape) for n, t in checkpoint.tensors.items()}
    # largest first, so the longest tasks do not start last and leave a core idle at the end
    names = sorted(sizes, key=lambda n: -sizes[n])
    total_bytes, done_bytes = sum(sizes.values()), 0
    by_name = {}
    with Pool(config.threads) as pool:
        records = pool.map(
            lambda n: _store_tensor(
                n, checkpoint.tensors[n], reuse, store, config, overrides or {}
            ),
            names,
        )
        for done, (n, record) in enumerate(zip(names, records, strict=True), 1):
            by_name[n] = record
            done_bytes += sizes[n]
            if progress is not None:
                progress(done, len(names), done_bytes, total_bytes)
    tensors = {name: by_name[name] for name in checkpoint.tensors}
    manifest = Manifest(checkpoint.format, tensors, checkpoint.aliases)
    if previous is not None and _unchanged(reuse.manifest, manifest):
        # the same checkpoint as the index has: its manifest stays byte for byte, even one an
        # older git-theta wrote (so `git status` stays clean after checking out old commits)
        return previous
    return manifest.to_bytes()


def _unchanged(old: Manifest | None, new: Manifest) -> bool:
    """Whether ``new`` reuses every record of ``old`` and is otherwise the same."""
    return (
        old is not None
        and old.format == new.format
        and old.aliases == new.aliases
        and old.tensors.keys() == new.tensors.keys()
        and all(new.tensors[name] is record for name, record in old.tensors.items())
    )


def missing_objects(manifest: Manifest, store: ObjectStore) -> dict[str, list[str]]:
    """Objects ``manifest`` needs that are not in ``store``, with the tensors needing them."""
    return {oid: names for oid, names in manifest.objects().items() if not store.has(oid)}


def load_tensor(name: str, record: TensorRecord, store: ObjectStore) -> np.ndarray:
    """The tensor's canonical words, rebuilt from its objects and verified."""
    return cast("np.ndarray", _load(name, record, store, updates.decode))


def load_bytes(
    name: str, record: TensorRecord, store: ObjectStore, new: Callable[[int], bytearray] = bytearray
) -> bytearray | np.ndarray:
    """The tensor's canonical bytes for a writer, verified (``updates.decode_bytes``: no
    numpy for a dense tensor, decoded into the buffer ``new(nbytes)`` gives)."""
    return _load(name, record, store, functools.partial(updates.decode_bytes, new=new))


def _load(
    name: str,
    record: TensorRecord,
    store: ObjectStore,
    decode: Callable[[TensorRecord, ObjectStore], bytearray | np.ndarray],
) -> bytearray | np.ndarray:
    _check_sound(name, record, store)
    try:
        words = decode(record, store)
        if updates.matches(record, words):
            return words
        failure: ThetaError = _mismatch(record)
    except CorruptObjectError as exc:
        failure = exc
    _raise_failure(name, record, store, failure)


def _check_sound(name: str, record: TensorRecord, store: ObjectStore) -> None:
    """Each object of the tensor against its oid, unless the store knows it to be sound."""
    for obj in record.objects:
        if not store.is_sound(obj):
            try:
                store.verify(obj.oid)
            except CorruptObjectError as exc:
                raise CorruptObjectError(f"tensor `{name}`: {exc}") from exc
            raise CorruptObjectError(
                f"tensor `{name}`: object {obj.oid[:12]}… has {store.path(obj.oid).stat().st_size} "
                f"bytes, not the {obj.size} its manifest records: run "
                "`git theta fsck --fetch` to download a good copy"
            )


def _mismatch(record: TensorRecord) -> ThetaError:
    oids = ", ".join(f"{o.oid[:12]}…" for o in record.objects)
    return HashMismatchError(
        f"rebuilt from object {oids}, it does not match its recorded hash, though the "
        "objects are sound: the manifest is damaged (check it out again from a good commit)"
    )


def _raise_failure(
    name: str, record: TensorRecord, store: ObjectStore, failure: ThetaError
) -> NoReturn:
    """Raises CorruptObjectError for the tensor: an object that does not match its oid when
    one does not (the clearer message), else ``failure``."""
    for obj in record.objects:
        try:
            store.read(obj.oid)
        except CorruptObjectError as exc:
            failure = exc
            break
    raise CorruptObjectError(f"tensor `{name}`: {failure}") from failure


# a tensor stored whole of at least this many bytes goes to a writer that takes pieces
# (``writes_pieces``) chunk by chunk as it decodes, on the writer's thread, instead of being
# decoded whole ahead of it: git gets its first bytes at once, not after the whole tensor
STREAM_MIN_BYTES = 16 << 20


def streams(record: TensorRecord) -> bool:
    """Whether checkout streams the tensor (``stream_bytes``): a large one stored whole, with
    a BLAKE3 to verify it by as it goes and the CRC-32 a zip writer needs before its data."""
    return (
        record.nbytes >= STREAM_MIN_BYTES
        and record.blake3 is not None
        and record.crc32 is not None
        and not chain(record.storage)[0]
    )


def stream_bytes(name: str, record: TensorRecord, store: ObjectStore) -> Iterator[memoryview]:
    """The tensor's canonical bytes in pieces, in order, each overwritten by the next (take
    each before asking for the next), hashed as they go. The tensor is verified before its
    last piece is given: a mismatch raises CorruptObjectError when the writer has written
    all the others. Checkout's writers fail the whole file then (git discards what the
    filter sent; ``checkout.rebuild`` removes its temporary file), as they do for any tensor
    that fails. An object that does not decode piece by piece (not in the words layout) is
    decoded whole, here, and given as one piece."""
    _check_sound(name, record, store)
    hasher = content_hasher(record.dtype, record.shape)
    done = 0
    pieces = updates.open_pieces(record, store)
    if pieces is not None:
        try:
            for piece in pieces:
                hasher.update(piece)
                done += len(piece)
                if done == record.nbytes and hasher.hexdigest() != record.blake3:
                    _raise_failure(name, record, store, _mismatch(record))  # before the last
                yield piece
        except codec.Undecodable:
            pass  # decoded whole below, from where the pieces stopped
    if done == record.nbytes:
        return
    whole = byte_view(load_bytes(name, record, store))  # verified, or raises
    if done:  # what was sent must be what the whole decoding gives
        sent = content_hasher(record.dtype, record.shape)
        sent.update(whole[:done])
        if sent.hexdigest() != hasher.hexdigest():
            _raise_failure(name, record, store, _mismatch(record))
    yield whole[done:]


def decode_threads(config: Config, manifest: Manifest) -> int:
    """Threads decoding ahead of a checkout's writer: ``theta.threads``, but when every
    tensor is stored whole one core is left to git, which reads everything the filter
    writes and then writes the file (one thread decodes whole tensors faster than git reads
    them: on 2 cores a checkout of a 498 MB `.pt` took 1.07 s with one, 1.22 s with two).
    Rebuilding a tensor from a chain of updates costs more: it gets every thread."""
    if any(chain(record.storage)[0] for record in manifest.tensors.values()):
        return max(1, config.threads)
    return max(1, min(config.threads, (os.cpu_count() or 1) - 1))


def smudge(
    manifest: Manifest,
    store: ObjectStore,
    out: BinaryIO,
    config: Config,
    fetch: Callable[[Manifest], object] | None = None,
    progress: Progress | None = None,
) -> None:
    """Write the checkpoint ``manifest`` describes to ``out``, front to back.

    When objects are not local, ``fetch(manifest)`` is called to get them; raises
    ObjectMissingError, before writing anything, when some are still missing. Tensors are
    decoded and verified ahead of the writer, in the order it consumes them, on
    ``decode_threads`` threads; a large one going to a writer that takes pieces is decoded
    on the writer's thread as it writes it (``stream_bytes``), while the pool goes on with
    the tensors after it.
    """
    missing = missing_objects(manifest, store)
    if missing and fetch is not None:
        fetch(manifest)
        missing = missing_objects(manifest, store)
    if missing:
        raise ObjectMissingError(missing)
    threads = decode_threads(config, manifest)
    fmt = formats.get(manifest.format["name"])
    spares = _Spares(SPARE_BYTES)
    load: Callable[[str, TensorRecord, ObjectStore], bytearray | np.ndarray] = load_tensor
    if getattr(fmt, "writes_buffers", False):
        load = functools.partial(load_bytes, new=spares.take)
    streamed: set[str] = set()
    if getattr(fmt, "writes_pieces", False):
        streamed = {name for name, rec in manifest.tensors.items() if streams(rec)}
    with Pool(threads) as pool:
        loader = _AheadLoader(
            manifest, store, pool, load, max(2, threads + 1), progress, spares, streamed
        )
        tensors = {
            name: TensorData(
                rec.dtype,
                rec.shape,
                functools.partial(loader.load, name),
                rec.crc32,
                functools.partial(loader.pieces, name) if name in streamed else None,
            )
            for name, rec in manifest.tensors.items()
        }
        loader.order = fmt.write_order(manifest.format, tensors, manifest.aliases)
        try:
            fmt.write(manifest.format, tensors, manifest.aliases, out)
        finally:
            loader.cancel()


# tensors decoded ahead of the writer: at most this many, holding at most these bytes beyond
# the loader's window (enough to keep the decoding threads busy while the writer streams;
# more only takes memory that the spares below could have reused)
AHEAD_MOST = 256
AHEAD_BYTES = 64 << 20
# buffers the writer is done with are kept, up to this many bytes, for the next tensors of
# their sizes (a model repeats its layers' shapes); smaller ones cost little to make anew
SPARE_BYTES = 64 << 20
SPARE_MIN_BYTES = 1 << 20


class _Spares:
    """Buffers the writer is done with, for the next tensor of the same size: decoding into
    one costs no page faults and no zero fill (a new buffer of a 498 MB checkpoint's tensors
    costs both for every page). At most ``limit`` bytes are kept; the decoder writes every
    byte of a buffer it takes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()  # taken by the decoding threads, given by the writer's
        self._kept: dict[int, list[bytearray]] = {}
        self._held = 0

    def take(self, nbytes: int) -> bytearray:
        with self._lock:
            kept = self._kept.get(nbytes)
            if kept:
                self._held -= nbytes
                return kept.pop()
        return bytearray(nbytes)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if self._held + len(buffer) <= self.limit:
                self._kept.setdefault(len(buffer), []).append(buffer)
                self._held += len(buffer)


class _AheadLoader:
    """Decodes tensors on a pool ahead of the writer, in its order: ``window`` tensors,
    and more while those decoded and not yet written hold at most ``AHEAD_BYTES`` (so the
    pool goes on with small tensors while the writer waits for a large one). The tensors in
    ``streamed`` are left to the writer's thread (``pieces``)."""

    def __init__(
        self,
        manifest: Manifest,
        store: ObjectStore,
        pool: Pool,
        load: Callable[[str, TensorRecord, ObjectStore], bytearray | np.ndarray],
        window: int,
        progress: Progress | None = None,
        spares: _Spares | None = None,
        streamed: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.load_one = load
        self.progress = progress
        self.total_bytes = sum(r.nbytes for r in manifest.tensors.values())
        self.done_bytes = 0
        self.manifest = manifest
        self.store = store
        self.pool = pool
        self.window = window
        self.order: list[str] = []
        self._next = 0
        self._pending: dict[str, Task[bytearray | np.ndarray]] = {}
        self._ahead = 0  # bytes of the tensors pending
        self._done: set[str] = set()
        self.spares = spares  # where buffers the writer is done with go (for ``load``)
        self._lent: list[bytearray] = []  # buffers handed to the writer, maybe still in use
        self.streamed = streamed  # tensors the writer takes in pieces (``pieces``)

    def _submit_ahead(self) -> None:
        while self._next < len(self.order) and len(self._pending) < AHEAD_MOST:
            name = self.order[self._next]
            if name in self.streamed:  # decoded as the writer takes it
                self._next += 1
                continue
            record = self.manifest.tensors[name]
            if len(self._pending) >= self.window and self._ahead + record.nbytes > AHEAD_BYTES:
                return
            self._next += 1
            if name not in self._pending and name not in self._done:
                self._pending[name] = self.pool.submit(self.load_one, name, record, self.store)
                self._ahead += record.nbytes

    def load(self, name: str) -> bytearray | np.ndarray:
        self._reclaim()  # first: the tensors submitted next can decode into what it frees
        self._submit_ahead()
        self._done.add(name)
        task = self._pending.pop(name, None)
        if task is None:  # asked out of the declared order: load it now
            result = self.load_one(name, self.manifest.tensors[name], self.store)
        else:
            self._ahead -= self.manifest.tensors[name].nbytes
            result = task.result()
            self._submit_ahead()
        if (
            self.spares is not None
            and isinstance(result, bytearray)
            and len(result) >= SPARE_MIN_BYTES
        ):
            self._lent.append(result)  # kept only to be reclaimed into the spares
        self._report(name)
        return result

    def pieces(self, name: str) -> Iterator[memoryview]:
        """A streamed tensor's bytes (``stream_bytes``), decoded on the writer's thread as it
        takes them while the pool decodes the tensors after it."""
        self._reclaim()
        self._done.add(name)
        self._submit_ahead()
        yield from stream_bytes(name, self.manifest.tensors[name], self.store)
        self._report(name)

    def _report(self, name: str) -> None:
        if self.progress is not None:
            self.done_bytes += self.manifest.tensors[name].nbytes
            total = len(self.manifest.tensors)
            self.progress(len(self._done), total, self.done_bytes, self.total_bytes)

    def _reclaim(self) -> None:
        """Hands the buffers lent to the writer that nothing holds any more (the writer is
        done with them) to the spares. A buffer is unheld when its reference count is that
        of a probe held the same way, by a list and this loop (measured, not assumed: how
        many references ``getrefcount`` itself adds differs between Python versions)."""
        if self.spares is None or not self._lent:
            return
        unheld = None
        still = []
        for buffer in [bytearray(), *self._lent]:
            count = sys.getrefcount(buffer)
            if unheld is None:
                unheld = count + 1  # the lent buffers are in ``self._lent`` too
            elif count <= unheld:
                self.spares.give(buffer)
            else:
                still.append(buffer)
        self._lent = still

    def cancel(self) -> None:
        for task in self._pending.values():
            self.pool.cancel(task)
