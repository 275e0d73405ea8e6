"""git theta fetch / checkout, and the pre-push hook git runs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from git_theta.cli.output import report


@click.command()
@click.argument("remote", required=False)
@click.argument("revs", nargs=-1)
def fetch(remote: str | None, revs: tuple[str, ...]) -> None:
    """Download the tensor objects that REVS need (default HEAD) from REMOTE.

    REMOTE defaults to the one git-lfs would use (lfs.remote.default, the branch's
    upstream, origin). Objects already local are not downloaded again.
    """
    from git_theta import transfer
    from git_theta.repo import Repo

    count = transfer.fetch_revisions(Repo.open(Path.cwd()), remote, list(revs))
    report(f"fetched {count} objects" if count else "all objects are already local")


@click.command()
@click.argument("paths", nargs=-1)
def checkout(paths: tuple[str, ...]) -> None:
    """Rebuild checkpoints in the work tree from their manifests.

    For each git-theta file (or each of PATHS) whose work-tree copy is a manifest or is
    missing: fetch the objects it needs in one batch, then write the checkpoint. Use it
    after a clone made with GIT_THETA_SKIP_SMUDGE=1 or without git-theta installed.
    A file holding a checkpoint is never overwritten.
    """
    from git_theta import checkout as checkout_lib
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    rebuilt = checkout_lib.checkout(repo, list(paths))
    warning = repo.ensure_hook()  # as the filter does: a global install adds no hooks
    if warning:
        report(f"warning: {warning}")
    report(f"rebuilt {', '.join(rebuilt)}" if rebuilt else "nothing to rebuild")


@click.group(hidden=True)
def hook() -> None:
    """Hooks git runs."""


@hook.command("pre-push")
@click.argument("remote")
@click.argument("url", required=False, default="")
def pre_push(remote: str, url: str) -> None:
    """Upload the objects the pushed commits need, then run the chained hook."""
    updates = sys.stdin.buffer.read()
    from git_theta import transfer
    from git_theta.gitio import hooks
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    count = transfer.push_objects(repo, remote, updates.decode("utf-8", "surrogateescape"))
    if count:
        report(f"uploaded {count} object{'s' if count != 1 else ''} to `{remote}`")
    code = hooks.run_chained(repo.hooks_dir, repo.top, repo.uses_git_lfs, [remote, url], updates)
    if code:
        sys.exit(code)
