"""``git-theta filter-process``: git's long-running filter, one process per git command.

Started by git for every command that reads or writes a tensor file, so it loads as little
as it can: no click, and the filter only at the first request, after that file's content
has arrived. A checkout of a PyTorch or safetensors file loads neither numpy nor
tensorstore (c-blosc decodes each object into a plain buffer; see ``git_theta.lazy``):
importing numpy alone takes 50-60 ms. They load when a tensor is encoded, or decoded from
an update or an older layout. (Loading modules on a second thread while the content
arrives was slower on two cores: git, the spooling and the imports then compete for them.)
A failed import is then reported for the file like any other error. stdout carries only
protocol data.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from git_theta.cli.output import report


def _describe(pathname: str, exc: BaseException) -> str:
    from git_theta.errors import ThetaError, describe_os_error

    if isinstance(exc, ThetaError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = describe_os_error(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return message if message.startswith(pathname) else f"{pathname}: {message}"


def on_error(command: str, pathname: str, exc: BaseException) -> None:
    """Report a failed request in one line on stderr (with a traceback under
    ``GIT_THETA_DEBUG``)."""
    report(f"error: {_describe(pathname, exc)}")
    _debug_traceback(exc)


def _debug_traceback(exc: BaseException) -> None:
    if os.environ.get("GIT_THETA_DEBUG"):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


def _progress(stage: str) -> Any:
    """A progress line for one file, when stderr is a terminal (git's own, through git)."""
    from git_theta.cli.output import Progress

    line = Progress()
    if not line.enabled:
        return None
    return lambda done, total, nbytes, total_bytes: line(stage, done, total, nbytes, total_bytes)


def filter_environment() -> None:
    """Settings numpy reads when it loads, for the filter processes only (a user's hooks and
    tools keep their own):

    - numpy's OpenBLAS starts a spinning thread per core; the filters do no linear algebra,
      and on a small machine those threads take CPU from git and the filter.
    - numpy asks the kernel for huge pages for every array of 4 MiB or more. Where memory is
      fragmented (the page cache of a machine that has been reading checkpoints), each such
      fault may stall on compaction: checking out a 498 MB `.pt` took 1.3-1.8 s with them
      and 1.0-1.3 s without (Git LFS: 1.0-1.2 s), its arrays faulted in 4 KiB pages.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def filter_process() -> NoReturn:
    """Serve git's requests on stdin/stdout until git closes the pipe, then exit.

    A failure of one file is answered ``status=error`` for that file; what ends the process
    early (a broken protocol stream, Ctrl-C) is one line on stderr and a non-zero exit."""
    from git_theta.errors import ThetaError

    filter_environment()
    # start-up makes many long-lived objects (modules, classes): no collections meanwhile,
    # and once the filter is built they are set aside where later collections skip them
    gc.disable()
    from git_theta.gitio import filter_process as protocol
    from git_theta.repo import Repo

    # the repository git runs the filter in, opened once at the first request (git does not
    # wait on the git commands that takes), then the driver over it
    repo = functools.cache(lambda: Repo.open(Path.cwd()))
    drivers: list[Any] = []

    def driver() -> Any:
        if not drivers:
            try:
                from git_theta.driver import FilterDriver

                drivers.append(
                    FilterDriver(repo(), lambda m: report(f"warning: {m}"), _progress, report)
                )
            finally:
                gc.freeze()
                gc.enable()
            # every repository the filter works in gets the pre-push hook: a clone made
            # under a global install must not push commits whose objects stay behind
            warning = repo().ensure_hook()
            if warning:
                report(f"warning: {warning}")
        return drivers[0]

    def handle(command: str, pathname: str, src: Path, out: BinaryIO) -> None:
        driver().handle(command, pathname, src, out)

    class Delay:
        """The driver's delay decisions."""

        def wants(self, pathname: str, src: Path) -> bool:
            return bool(driver().wants(pathname, src))

        def ready(self, delayed: list[tuple[str, Path]]) -> None:
            driver().ready(delayed)

    code = 0
    try:
        protocol.serve(handle, on_error, tmp_dir=lambda: repo().store.tmp_dir, delayer=Delay())
    except ThetaError as exc:
        report(f"error: {exc}")
        code = exc.exit_code
    except KeyboardInterrupt:
        report("aborted")
        code = 130
    except EOFError:
        report("error: git closed the filter's input in the middle of a request")
        code = 1
    except protocol.pktline.ProtocolError as exc:  # not git on the other end
        report(
            f"error: the filter's input is not git's long-running filter protocol ({exc}): "
            "`git-theta filter-process` is started by git, as `git theta install` sets up"
        )
        code = 1
    except BrokenPipeError:
        code = 1  # git went away: nobody is left to read a message
    except Exception as exc:  # a broken protocol stream or a bug: one line, not a traceback
        report(f"error: filter process failed: {type(exc).__name__}: {exc}")
        _debug_traceback(exc)
        code = 1
    # git waits for the filter to exit before it finishes its command; every object is
    # written and renamed and every answer flushed by now, so skip the interpreter's
    # teardown (tensorstore's and numpy's take tens of milliseconds)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)
