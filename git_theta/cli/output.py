"""What the command line says to people: one line at a time, on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def report(message: str) -> None:
    """One line for people, on stderr."""
    print(f"git-theta: {message}", file=sys.stderr, flush=True)


class Progress:
    """A progress line on stderr, rewritten in place, shown only when stderr is a terminal
    (like git's own): ``progress(stage, done, total)``, or with the bytes done and to do
    ``progress(stage, done, total, nbytes, total_bytes)`` (then also the rate). Redrawn at
    most ten times a second, and always when done."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = ""
        self._drawn = 0.0
        self._start: float | None = None

    def __call__(
        self,
        stage: str,
        done: int,
        total: int,
        nbytes: int | None = None,
        total_bytes: int | None = None,
    ) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        finished = done >= total
        if not finished and now - self._drawn < 0.1:
            return
        line = f"git-theta: {stage}: {100 * done // total}% ({done}/{total}"
        if nbytes is not None and total_bytes is not None:
            line += f", {size_text(nbytes)}/{size_text(total_bytes)}"
            if now > self._start:
                line += f", {size_text(int(nbytes / (now - self._start)))}/s"
        line += ")"
        if line == self._last:
            return
        self._last, self._drawn = line, now
        print(f"\r{line}\033[K", end="\n" if finished else "", file=sys.stderr, flush=True)


def size_text(n: int) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 2.0 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_COLORS = {
    "diff ": "\033[1m",
    "A ": "\033[32m",
    "D ": "\033[31m",
    "M ": "\033[33m",
    "~ ": "\033[36m",
}


def show_lines(lines: list[str], top: Path | None) -> None:
    """Print ``lines`` on stdout; on a terminal (as git does) coloured by their first mark
    and through git's pager (GIT_PAGER, core.pager, PAGER; ``less`` with ``LESS=FRX``)."""
    if not lines:
        return
    if not sys.stdout.isatty():
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    coloured = []
    for line in lines:
        colour = next((c for mark, c in _COLORS.items() if line.startswith(mark)), "")
        coloured.append(f"{colour}{line}\033[m" if colour else line)
    text = "".join(line + "\n" for line in coloured)
    pager = subprocess.run(
        ["git", "var", "GIT_PAGER"], cwd=top, capture_output=True, text=True
    ).stdout.strip()
    if not pager or pager == "cat":
        sys.stdout.write(text)
        return
    env = {**os.environ, "LESS": os.environ.get("LESS", "FRX"), "LV": os.environ.get("LV", "-c")}
    with subprocess.Popen(pager, shell=True, stdin=subprocess.PIPE, env=env, cwd=top) as proc:
        assert proc.stdin is not None
        try:
            proc.stdin.write(text.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the reader quit the pager early
