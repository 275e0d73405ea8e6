"""git's long-running filter protocol (``filter.<driver>.process``).

Handshake: git sends ``git-filter-client`` and ``version=2``; we answer ``git-filter-server``
and ``version=2``, then git lists capabilities and we answer the ones we support (``clean``,
``smudge``). Then, per file: a list of ``command=...``, ``pathname=...`` and other keys, the
content, and we answer ``status=success``, the new content and an empty status list (keep
``success``).

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
from typing import IO, BinaryIO

from git_theta.gitio import pktline

# handler(command, pathname, input file path, output stream) writes the result to output.
Handler = Callable[[str, str, Path, BinaryIO], None]
ErrorReporter = Callable[[str, str, BaseException], None]
CAPABILITIES = ("clean", "smudge")
_BUFFER = 1 << 20


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


def _handshake(inp: BinaryIO, out: BinaryIO) -> None:
    welcome = pktline.read_text_list(inp)
    if welcome[:1] != ["git-filter-client"] or "version=2" not in welcome[1:]:
        raise pktline.ProtocolError(f"unexpected filter handshake {welcome!r}")
    pktline.write_text(out, "git-filter-server")
    pktline.write_text(out, "version=2")
    pktline.write_flush(out)
    offered = {line.removeprefix("capability=") for line in pktline.read_text_list(inp)}
    for capability in CAPABILITIES:
        if capability in offered:
            pktline.write_text(out, f"capability={capability}")
    pktline.write_flush(out)


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
) -> None:
    """Answer git's requests until it closes the pipe."""
    inp = inp or open(sys.stdin.fileno(), "rb", buffering=_BUFFER, closefd=False)  # noqa: SIM115
    out = out or open(sys.stdout.fileno(), "wb", buffering=_BUFFER, closefd=False)  # noqa: SIM115
    _grow_pipes()
    _handshake(inp, out)
    spool_dir: Path | None = None
    while True:
        try:
            headers = pktline.read_text_list(inp)
        except EOFError:
            return
        meta = dict(line.split("=", 1) for line in headers if "=" in line)
        command, pathname = meta.get("command", ""), meta.get("pathname", "")
        try:
            if tmp_dir is not None and spool_dir is None:
                # found after the handshake: git does not wait on the git commands it takes
                spool_dir = _usable(tmp_dir())
            src = tempfile.NamedTemporaryFile(dir=spool_dir, prefix="theta-in-")  # noqa: SIM115
        except Exception as exc:  # no place to spool to: this file fails, the stream goes on
            _drain(inp)
            _fail(out, on_error, command, pathname, exc, started=False)
            continue
        with src:
            try:
                _spool(inp, src)
            except OSError as exc:  # e.g. a full disk: read the rest, fail this file
                _drain(inp)
                _fail(out, on_error, command, pathname, exc, started=False)
                continue
            answer = _Answer(out)
            try:
                if command not in CAPABILITIES:
                    raise ValueError(f"unsupported filter command {command!r}")
                handler(command, pathname, Path(src.name), answer)  # type: ignore[arg-type]
            except Exception as exc:  # any failure becomes status=error for this file
                _fail(out, on_error, command, pathname, exc, started=answer.started)
                continue
            answer.start()  # an empty result is still a success
            pktline.write_flush(out)
            pktline.write_flush(out)  # empty list: status stays "success"
