"""The filter commands git runs: filter-process (long-running), clean and smudge (one-shot).

stdout carries only what git reads; messages go to stderr.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

import click

from git_theta.cli import report
from git_theta.errors import ThetaError
from git_theta.gitio import filter_process as protocol
from git_theta.gitio import git


def _describe(pathname: str, exc: BaseException) -> str:
    message = str(exc) if isinstance(exc, ThetaError) else f"{type(exc).__name__}: {exc}"
    return message if message.startswith(pathname) else f"{pathname}: {message}"


def _on_error(command: str, pathname: str, exc: BaseException) -> None:
    report(f"error: {_describe(pathname, exc)}")
    if os.environ.get("GIT_THETA_DEBUG"):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


def _one_shot(command: str, path: str) -> None:
    from git_theta.filter import RepoFilter

    repo = RepoFilter()
    with (
        tempfile.NamedTemporaryFile(prefix="theta-in-") as src,
        tempfile.TemporaryFile(prefix="theta-out-") as dst,
    ):
        shutil.copyfileobj(sys.stdin.buffer, src)
        src.flush()
        try:
            repo.handle(command, path, Path(src.name), dst)
        except Exception as exc:
            _on_error(command, path, exc)
            sys.exit(1)
        dst.seek(0)
        shutil.copyfileobj(dst, sys.stdout.buffer)
        sys.stdout.buffer.flush()


@click.command(hidden=True)
@click.argument("path", default="")
def clean(path: str) -> None:
    """Checkpoint on stdin -> manifest on stdout (git's clean filter, one file)."""
    _one_shot("clean", path)


@click.command(hidden=True)
@click.argument("path", default="")
def smudge(path: str) -> None:
    """Manifest on stdin -> checkpoint on stdout (git's smudge filter, one file)."""
    _one_shot("smudge", path)


@click.command("filter-process", hidden=True)
def filter_process() -> None:
    """Serve git's long-running filter protocol on stdin/stdout."""
    # numpy and tensorstore load on another thread while git's handshake and the first
    # file's content arrive; the filter itself is built at the first request
    threading.Thread(target=_warm_up, daemon=True).start()
    filters: list[Any] = []

    def handle(command: str, pathname: str, src: Path, out: BinaryIO) -> None:
        if not filters:
            from git_theta.filter import RepoFilter

            filters.append(RepoFilter())
            if filters[0].warning:
                report(f"warning: {filters[0].warning}")
        filters[0].handle(command, pathname, src, out)

    protocol.serve(handle, _on_error, tmp_dir=git.lfs_dir() / "tmp")
    # git waits for the filter to exit before it finishes its command; every object is
    # written and renamed and every answer flushed by now, so skip the interpreter's
    # teardown (tensorstore's and numpy's take tens of milliseconds)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warm_up() -> None:
    for module in ("git_theta.filter", "tensorstore"):
        importlib.import_module(module)
