"""``git-theta filter-process``: git's long-running filter, one process per git command.

Started by git for every command that reads or writes a tracked file, so it loads as little
as it can: no click, and the filter (numpy, tensorstore) only at the first request, after
that file's content has arrived. (Loading them on a second thread while the content arrives
was slower on two cores: git, the spooling and the imports then compete for them.) A failed
import is then reported for the file like any other error. stdout carries only protocol
data.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from git_theta.cli import report


def _describe(pathname: str, exc: BaseException) -> str:
    from git_theta.errors import ThetaError

    message = str(exc) if isinstance(exc, ThetaError) else f"{type(exc).__name__}: {exc}"
    return message if message.startswith(pathname) else f"{pathname}: {message}"


def on_error(command: str, pathname: str, exc: BaseException) -> None:
    """Report a failed request in one line on stderr (with a traceback under
    ``GIT_THETA_DEBUG``)."""
    report(f"error: {_describe(pathname, exc)}")
    if os.environ.get("GIT_THETA_DEBUG"):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


def filter_process() -> int:
    """Serve git's requests on stdin/stdout until git closes the pipe; does not return."""
    # start-up makes many long-lived objects (modules, classes): no collections meanwhile,
    # and once the filter is built they are set aside where later collections skip them
    gc.disable()
    from git_theta.gitio import filter_process as protocol
    from git_theta.gitio import git

    filters: list[Any] = []

    def handle(command: str, pathname: str, src: Path, out: BinaryIO) -> None:
        if not filters:
            try:
                import tensorstore  # noqa: F401  (the codec's; loaded here, with the rest)

                from git_theta.filter import RepoFilter

                filters.append(RepoFilter())
            finally:
                gc.freeze()
                gc.enable()
            if filters[0].warning:
                report(f"warning: {filters[0].warning}")
        filters[0].handle(command, pathname, src, out)

    protocol.serve(handle, on_error, tmp_dir=lambda: git.lfs_dir() / "tmp")
    # git waits for the filter to exit before it finishes its command; every object is
    # written and renamed and every answer flushed by now, so skip the interpreter's
    # teardown (tensorstore's and numpy's take tens of milliseconds)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
