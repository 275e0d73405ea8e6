"""git theta add / ls-files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from git_theta.cli.output import size_text


class _VerbatimCommand(click.Command):
    """Keeps the arguments exactly as given (click would swallow a `--`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["verbatim"] = list(args)
        return super().parse_args(ctx, args)


@click.command(
    cls=_VerbatimCommand,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def add(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Stage checkpoints: `git add` with the same paths and options.

    Everything after `add` is passed to `git add` unchanged.
    """
    code = subprocess.run(["git", "add", *ctx.meta["verbatim"]]).returncode
    if code:
        sys.exit(code)


@click.command("ls-files")
def ls_files() -> None:
    """List checkpoints in the index stored by git-theta.

    Columns: tensors, logical size (the tensors' bytes) and stored size (the distinct
    objects the manifest needs), then the path.
    """
    from git_theta import inventory  # numpy loads only for this command
    from git_theta.repo import Repo

    for item in inventory.tracked_files(Repo.open(Path.cwd())):
        if item.manifest is None:
            click.echo(f"{'-':>8} {'-':>10} {'-':>10}  {item.path}  ({item.problem})")
            continue
        m = item.manifest
        click.echo(
            f"{len(m.tensors):>8} {size_text(m.logical_size()):>10} "
            f"{size_text(m.stored_size()):>10}  {item.path}"
        )
