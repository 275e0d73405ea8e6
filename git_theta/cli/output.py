"""What the command line says to people: one line at a time, on stderr."""

from __future__ import annotations

import sys


def report(message: str) -> None:
    """One line for people, on stderr."""
    print(f"git-theta: {message}", file=sys.stderr, flush=True)
