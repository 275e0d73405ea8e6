"""The filter commands git runs: filter-process (long-running), clean and smudge (one-shot).

stdout carries only what git reads; messages go to stderr.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from git_theta.cli import serve
from git_theta.cli.output import report


def _one_shot(command: str, path: str) -> None:
    serve.filter_environment()
    from git_theta.driver import FilterDriver
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    warning = repo.ensure_hook()
    if warning:
        report(f"warning: {warning}")
    driver = FilterDriver(repo, warn=lambda message: report(f"warning: {message}"), note=report)
    with (
        tempfile.NamedTemporaryFile(prefix="theta-in-") as src,
        tempfile.TemporaryFile(prefix="theta-out-") as dst,
    ):
        shutil.copyfileobj(sys.stdin.buffer, src)
        src.flush()
        try:
            driver.handle(command, path, Path(src.name), dst)
        except Exception as exc:
            serve.on_error(command, path, exc)
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
    serve.filter_process()
