"""git's long-running filter protocol (``filter.<driver>.process``).

Handshake: git sends ``git-filter-client`` and ``version=2``; we answer ``git-filter-server``
and ``version=2``, then git lists capabilities and we answer the ones we support (``clean``,
``smudge``). Then, per file: a list of ``command=...``, ``pathname=...`` and other keys, the
content, and we answer ``status=success``, the new content and an empty status list (keep
``success``), or ``status=error`` before any content.

The file's content is spooled to a temporary file, the handler writes its result to another
temporary file, and only then does the answer start, so a failure never sends half a file.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from git_theta.gitio import pktline

# handler(command, pathname, input file path, output stream) writes the result to output.
Handler = Callable[[str, str, Path, BinaryIO], None]
ErrorReporter = Callable[[str, str, BaseException], None]
CAPABILITIES = ("clean", "smudge")


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


def serve(
    handler: Handler,
    on_error: ErrorReporter,
    tmp_dir: Path | None = None,
    inp: BinaryIO | None = None,
    out: BinaryIO | None = None,
) -> None:
    """Answer git's requests until it closes the pipe."""
    inp = inp or sys.stdin.buffer
    out = out or sys.stdout.buffer
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    _handshake(inp, out)
    while True:
        try:
            headers = pktline.read_text_list(inp)
        except EOFError:
            return
        meta = dict(line.split("=", 1) for line in headers if "=" in line)
        command, pathname = meta.get("command", ""), meta.get("pathname", "")
        with (
            tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="theta-in-") as src,
            tempfile.TemporaryFile(dir=tmp_dir, prefix="theta-out-") as dst,
        ):
            for chunk in pktline.read_content(inp):
                src.write(chunk)
            src.flush()
            try:
                if command not in CAPABILITIES:
                    raise ValueError(f"unsupported filter command {command!r}")
                handler(command, pathname, Path(src.name), dst)
            except Exception as exc:  # any failure becomes status=error for this file
                on_error(command, pathname, exc)
                pktline.write_text(out, "status=error")
                pktline.write_flush(out)
                continue
            pktline.write_text(out, "status=success")
            pktline.write_flush(out)
            dst.seek(0)
            pktline.write_content(out, dst)
            pktline.write_flush(out)
            pktline.write_flush(out)  # empty list: status stays "success"
