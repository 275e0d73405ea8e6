"""The click command tree of ``git theta`` and the error handling around it."""

from __future__ import annotations

import os

import click

from git_theta import __version__
from git_theta.cli.output import report
from git_theta.errors import ThetaError, describe_os_error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="git-theta")
def root() -> None:
    """Version machine-learning checkpoints with git, tensor by tensor.

    Run `git theta install` once, `git theta track model.pt` in a repository, then use
    git as usual: add, commit, checkout, switch and stash store and rebuild checkpoints.
    """


def _register() -> None:
    from git_theta.cli import (
        diffs,
        files,
        filters,
        maintenance,
        merging,
        models,
        remote,
        setup,
        track,
    )

    for command in (
        setup.install,
        setup.uninstall,
        track.track,
        track.untrack,
        files.add,
        files.ls_files,
        remote.fetch,
        remote.checkout,
        maintenance.fsck,
        maintenance.gc,
        maintenance.squash,
        merging.resolve,
        diffs.diff,
        diffs.log,
        diffs.runs,
        models.registry,
        diffs.show,
        diffs.diff_driver,
        diffs.textconv,
        merging.merge_driver,
        remote.hook,
        filters.clean,
        filters.smudge,
        filters.filter_process,
    ):
        root.add_command(command)


_register()


def run(argv: list[str] | None = None) -> int:
    """Run one ``git theta`` command; returns its exit code."""
    try:
        root.main(args=argv, prog_name="git theta", standalone_mode=False)
    except ThetaError as exc:
        report(f"error: {exc}")
        if os.environ.get("GIT_THETA_DEBUG"):
            raise
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a full disk, a read-only store: one line, not a traceback
        report(f"error: {describe_os_error(exc)}")
        if os.environ.get("GIT_THETA_DEBUG"):
            raise
        return 1
    except click.UsageError as exc:
        if exc.ctx is not None and exc.ctx.parent is None:
            # git turns `git theta --help` into `git help theta` (a man page), so the hint
            # for the root command names -h, which reaches us
            click.echo(f"{exc.ctx.get_usage()}\nTry 'git theta -h' for help.\n", err=True)
            click.echo(f"Error: {exc.format_message()}", err=True)
            return exc.exit_code
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    return 0
