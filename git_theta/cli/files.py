"""git theta add / ls-files."""

from __future__ import annotations

import os
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

    Everything after `add` is passed to `git add` unchanged, except:

    \b
    --update-type T   how changed tensors are stored this time: auto, dense,
                      xor or sparse (see theta.updateType); with --update-data:
                      low-rank, ia3 or sparse
    --update-data F   the update to apply to the staged version of the one
                      checkpoint PATH names: a torch or safetensors file with
                      <tensor>/R and <tensor>/C (low-rank), <tensor>/ia3 (ia3),
                      or <tensor>/data, /indices, /indptr (sparse: a CSR matrix
                      of the flattened difference); or a PEFT LoRA adapter
                      directory (or its adapter_model.safetensors). The file at
                      PATH is rewritten to the result and staged.
    """
    rest, kind, data = _update_options(list(ctx.meta["verbatim"]))
    if data is not None:
        from git_theta import apply
        from git_theta.cli.output import report
        from git_theta.repo import Repo
        from git_theta.updates.given import KINDS

        paths = [a for a in rest if a != "--"]
        if kind not in KINDS:
            raise click.UsageError(f"--update-data needs --update-type {' / '.join(KINDS)}")
        if len(paths) != 1 or paths[0].startswith("-"):
            raise click.UsageError("--update-data applies to exactly one PATH (and no options)")
        done = apply.add_update(Repo.open(Path.cwd()), paths[0], kind, Path(data).resolve())
        fixed = f"; {done.corrected} words corrected" if done.corrected else ""
        report(
            f"{done.path}: {done.tensors} tensor{'s' if done.tensors != 1 else ''} updated "
            f"({kind}{fixed}); the file now holds the result and is staged"
        )
        return
    env = None
    if kind is not None:
        from git_theta.config import UPDATE_TYPES

        if kind not in ("auto", *UPDATE_TYPES):
            raise click.UsageError(
                f"--update-type {kind} without --update-data: use auto, dense, xor or sparse "
                "(low-rank and ia3 need --update-data)"
            )
        env = {**os.environ, "GIT_THETA_UPDATE_TYPE": kind}
    code = subprocess.run(["git", "add", *rest], env=env).returncode
    if code:
        sys.exit(code)


def _update_options(args: list[str]) -> tuple[list[str], str | None, str | None]:
    """``args`` without ``--update-type T`` and ``--update-data F`` (either spelled with
    ``=``), and their values; a ``--`` ends the options."""
    rest: list[str] = []
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        key, eq, value = arg.partition("=")
        if key in ("--update-type", "--update-data"):
            if not eq:
                if i + 1 >= len(args):
                    raise click.UsageError(f"{key} needs a value")
                value = args[i + 1]
                i += 1
            found[key] = value
        else:
            rest.append(arg)
        i += 1
    return rest, found.get("--update-type"), found.get("--update-data")


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
