"""What the command line says to people: one line at a time, on stderr."""

from __future__ import annotations

import sys


def report(message: str) -> None:
    """One line for people, on stderr."""
    print(f"git-theta: {message}", file=sys.stderr, flush=True)


class Progress:
    """A progress line on stderr, rewritten in place, shown only when stderr is a terminal
    (like git's own): ``progress(stage, done, total)``."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        line = f"git-theta: {stage}: {100 * done // total}% ({done}/{total})"
        if line == self._last:
            return
        self._last = line
        end = "\n" if done >= total else ""
        print(f"\r{line}", end=end, file=sys.stderr, flush=True)


def size_text(n: int) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 2.0 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
