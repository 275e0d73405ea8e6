"""git's long-running filter protocol (``filter.<driver>.process``).

Handshake: git sends ``git-filter-client`` and ``version=2``; we answer ``git-filter-server``
and ``version=2``, then git lists capabilities and we answer the ones we support (``clean``,
``smudge``). Then, per file: a list of ``command=...``, ``pathname=...`` and other keys, the
content, and we answer ``status=success``, the new content and an empty status list (keep
``success``).

Delay (git's ``delay`` capability, claimed when a ``Delayer`` is given): a smudge request
marked ``can-delay=1`` whose content the delayer ``wants`` to delay is answered
``status=delayed``, its content kept. When git then sends ``list_available_blobs``, the
delayer gets every delayed request at once (``ready``: one download for all of them), and
the answer lists their pathnames; git asks for each again with empty content, and the
handler gets the content kept. So a checkout of many files fetches in one transfer.

The file's content is spooled to a temporary file (formats need random access). The answer
is streamed as the handler writes it: ``status=success`` goes out with the first bytes. A
handler that fails before writing anything is answered ``status=error`` alone; one that fails
after is answered with the content so far and then ``status=error``, which the protocol
defines as an abort: git discards the content and the command fails.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from git_theta.errors import UsageError
from git_theta.gitio import pktline

# handler(command, pathname, input file path, output stream) writes the result to output.
Handler = Callable[[str, str, Path, BinaryIO], None]
ErrorReporter = Callable[[str, str, BaseException], None]
COMMANDS = ("clean", "smudge")
_BUFFER = 1 << 20


class Delayer(Protocol):
    """Decides which smudge requests wait, and readies the waiting ones together."""

    def wants(self, pathname: str, src: Path) -> bool:
        """Whether to delay smudging the content at ``src`` (it is kept until asked again)."""
        ...

    def ready(self, delayed: list[tuple[str, Path]]) -> None:
        """Prepare every delayed request at once (e.g. download what they need)."""
        ...


class _Answer:
    """A write-only stream that sends what is written as content packets, after a
    ``status=success`` sent with the first bytes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.started = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return 0
        self.start()
        fd = _fileno(self.out)
        if fd is None or view.nbytes < _BUFFER:
            for pos in range(0, view.nbytes, pktline.MAX_PAYLOAD):
                pktline.write_packet(self.out, view[pos : pos + pktline.MAX_PAYLOAD])
            return view.nbytes
        # large content: packets go straight from the data to the pipe, no copy on the way
        self.out.flush()
        parts: list[bytes | memoryview] = []
        for pos in range(0, view.nbytes, pktline.MAX_PAYLOAD):
            payload = view[pos : pos + pktline.MAX_PAYLOAD]
            parts += [b"%04x" % (payload.nbytes + 4), payload]
            if len(parts) >= _IOV_BATCH:
                _writev_all(fd, parts)
                parts = []
        _writev_all(fd, parts)
        return view.nbytes

    def start(self) -> None:
        if not self.started:
            self.started = True
            pktline.write_text(self.out, "status=success")
            pktline.write_flush(self.out)

    def flush(self) -> None:
        pass


_IOV_BATCH = 512


def _fileno(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # BytesIO and other in-memory streams
        return None


def _writev_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write every part, in order, however the kernel splits the writes."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _spool(inp: BinaryIO, dst: IO[bytes]) -> None:
    """Copy one file's content packets to ``dst``."""
    for chunk in pktline.read_content(inp):
        dst.write(chunk)
    dst.flush()


def _drain(inp: BinaryIO) -> None:
    """Read past the rest of a file's content packets (up to its flush)."""
    for _ in pktline.read_content(inp):
        pass


def _fail(
    out: BinaryIO,
    on_error: ErrorReporter,
    command: str,
    pathname: str,
    exc: BaseException,
    started: bool,
) -> None:
    """Report ``exc`` and answer ``status=error`` for the file (after ending the partial
    content when some was sent)."""
    on_error(command, pathname, exc)
    if started:
        pktline.write_flush(out)  # end of the partial content
    pktline.write_text(out, "status=error")
    pktline.write_flush(out)


def _grow_pipes() -> None:
    """Ask for 1 MiB pipe buffers to and from git (Linux): fewer switches per checkpoint."""
    try:
        import fcntl

        for fd in (0, 1):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _BUFFER)
    except (ImportError, OSError, ValueError):
        pass  # not a pipe, not Linux, or over the system's limit: the default works too


def _handshake(inp: BinaryIO, out: BinaryIO, delay: bool) -> bool:
    """Agree on the protocol; returns whether git takes delayed answers."""
    welcome = pktline.read_text_list(inp)
    if welcome[:1] != ["git-filter-client"] or "version=2" not in welcome[1:]:
        raise pktline.ProtocolError(f"unexpected filter handshake {welcome!r}")
    pktline.write_text(out, "git-filter-server")
    pktline.write_text(out, "version=2")
    pktline.write_flush(out)
    offered = {line.removeprefix("capability=") for line in pktline.read_text_list(inp)}
    claimed = [c for c in (*COMMANDS, *(("delay",) if delay else ())) if c in offered]
    for capability in claimed:
        pktline.write_text(out, f"capability={capability}")
    pktline.write_flush(out)
    return "delay" in claimed


class _Delayed:
    """Smudge requests answered ``status=delayed``: their kept content, by pathname."""

    def __init__(self, delayer: Delayer, on_error: ErrorReporter) -> None:
        self.delayer = delayer
        self.on_error = on_error
        self.kept: dict[str, IO[bytes]] = {}
        self.listed: set[str] = set()

    def list_available(self, out: BinaryIO) -> None:
        """Answer ``list_available_blobs``: ready every request not listed yet, list them
        (an empty list tells git that nothing is left)."""
        pending = [name for name in self.kept if name not in self.listed]
        if pending:
            try:
                self.delayer.ready([(name, Path(self.kept[name].name)) for name in pending])
            except Exception as exc:  # each file then fails (or fetches) on its own
                self.on_error("smudge", pending[0], exc)
        for name in pending:
            pktline.write_text(out, f"pathname={name}")
        self.listed.update(pending)
        pktline.write_flush(out)
        pktline.write_text(out, "status=success")
        pktline.write_flush(out)

    def take(self, pathname: str) -> IO[bytes] | None:
        """The kept content of a delayed request git asks for again."""
        if pathname not in self.listed:
            return None
        self.listed.discard(pathname)
        return self.kept.pop(pathname, None)


def _usable(directory: Path) -> Path:
    """``directory`` when files can be made there, else the system's temporary directory
    (a read-only object store can still serve checkouts)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix="theta-probe-"):
            pass
        return directory
    except OSError:
        return Path(tempfile.gettempdir())


def serve(
    handler: Handler,
    on_error: ErrorReporter,
    tmp_dir: Callable[[], Path] | None = None,
    inp: BinaryIO | None = None,
    out: BinaryIO | None = None,
    delayer: Delayer | None = None,
) -> None:
    """Answer git's requests until it closes the pipe."""
    inp = inp or open(sys.stdin.fileno(), "rb", buffering=_BUFFER, closefd=False)  # noqa: SIM115
    out = out or open(sys.stdout.fileno(), "wb", buffering=_BUFFER, closefd=False)  # noqa: SIM115
    _grow_pipes()
    takes_delay = _handshake(inp, out, delayer is not None)
    delayed = _Delayed(delayer, on_error) if delayer is not None and takes_delay else None
    spool_dir: Path | None = None
    try:
        while True:
            try:
                headers = pktline.read_text_list(inp)
            except EOFError:
                return
            spool_dir = _request(headers, handler, on_error, tmp_dir, inp, out, delayed, spool_dir)
    finally:
        for kept in delayed.kept.values() if delayed else ():
            kept.close()


def _request(
    headers: list[str],
    handler: Handler,
    on_error: ErrorReporter,
    tmp_dir: Callable[[], Path] | None,
    inp: BinaryIO,
    out: BinaryIO,
    delayed: _Delayed | None,
    spool_dir: Path | None,
) -> Path | None:
    """Answer one request; returns the spool directory (found at the first request)."""
    meta = dict(line.split("=", 1) for line in headers if "=" in line)
    command, pathname = meta.get("command", ""), meta.get("pathname", "")
    if command == "list_available_blobs" and delayed is not None:
        delayed.list_available(out)  # no content follows this command
        return spool_dir
    try:
        if tmp_dir is not None and spool_dir is None:
            # found after the handshake: git does not wait on the git commands it takes
            spool_dir = _usable(tmp_dir())
        src: IO[bytes] = tempfile.NamedTemporaryFile(dir=spool_dir, prefix="theta-in-")  # noqa: SIM115
    except Exception as exc:  # no place to spool to: this file fails, the stream goes on
        _drain(inp)
        _fail(out, on_error, command, pathname, exc, started=False)
        return spool_dir
    try:
        _spool(inp, src)
    except OSError as exc:  # e.g. a full disk: read the rest, fail this file
        src.close()
        _drain(inp)
        if exc.filename is None:  # say where it was being written
            exc = OSError(exc.errno, exc.strerror, str(spool_dir))
        _fail(out, on_error, command, pathname, exc, started=False)
        return spool_dir
    if delayed is not None and command == "smudge":
        kept = delayed.take(pathname)
        if kept is not None:  # asked again (with empty content): the content kept
            src.close()
            src = kept
        elif meta.get("can-delay") == "1" and _wants(delayed.delayer, pathname, src):
            delayed.kept[pathname] = src  # closed (and deleted) once answered
            pktline.write_text(out, "status=delayed")
            pktline.write_flush(out)
            return spool_dir
    with src:
        answer = _Answer(out)
        try:
            if command not in COMMANDS:
                raise UsageError(
                    f"git asked for the filter command {command!r:.40}, which git-theta does "
                    f"not serve (it serves {' and '.join(COMMANDS)})"
                )
            handler(command, pathname, Path(src.name), answer)  # type: ignore[arg-type]
        except Exception as exc:  # any failure becomes status=error for this file
            _fail(out, on_error, command, pathname, exc, started=answer.started)
            return spool_dir
        answer.start()  # an empty result is still a success
        pktline.write_flush(out)
        pktline.write_flush(out)  # empty list: status stays "success"
    return spool_dir


def _wants(delayer: Delayer, pathname: str, src: IO[bytes]) -> bool:
    try:
        return delayer.wants(pathname, Path(src.name))
    except Exception:  # the request is answered now, and fails or succeeds on its own
        return False
