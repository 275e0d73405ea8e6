"""git theta fsck / gc."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from git_theta.cli.output import Progress, report, size_text


@click.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Check what every ref, reflog entry, stash entry and worktree index needs.",
)
@click.option(
    "--fetch",
    is_flag=True,
    help="Download missing or corrupt objects again from the remote, then check them again.",
)
@click.option("--remote", metavar="NAME", help="The remote --fetch uses (default: git-lfs's).")
def fsck(everything: bool, fetch: bool, remote: str | None) -> None:
    """Check the tensor objects that checkpoints need.

    For the manifests in HEAD and in the index (with --all: in everything the repository
    keeps), each object must be here, its bytes must hash to its id (every object is read
    in full), and each tensor must decode to the hash its manifest records. Prints one line
    per problem (path, commit or index, tensor) and exits 1 when there is any, 0 when all
    is well.
    """
    from git_theta import fsck as fsck_lib
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    result = fsck_lib.fsck(repo, everything, fetch, remote, Progress())
    for oid in result.repaired:
        click.echo(f"repaired object {oid} (downloaded again)")
    for problem in result.problems:
        click.echo(str(problem))
    if result.fetch_error:
        report(f"fetching failed: {result.fetch_error}")
    summary = (
        f"{result.manifests} manifests, {result.tensors} distinct tensors, "
        f"{result.objects} objects checked"
    )
    if not result.problems:
        report(f"{summary}: all sound")
        return
    hint = (
        "`git add` an intact copy of the checkpoint to store its objects again"
        if fetch
        else "run `git theta fsck --fetch` to download good copies from the remote, or "
        "`git add` an intact copy of the checkpoint"
    )
    count = len(result.problems)
    report(f"{summary}: {count} problem{'s' if count != 1 else ''}; {hint}")
    sys.exit(1)


@click.command()
@click.option("-n", "--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option(
    "--prune",
    metavar="DATE",
    help="Delete unneeded files older than DATE (default: gc.pruneExpire, else 2.weeks.ago; "
    "`now` for all, `never` for none).",
)
def gc(dry_run: bool, prune: str | None) -> None:
    """Delete tensor objects nothing needs, and temporary files of killed processes.

    An object is needed when a manifest kept by any ref, reflog entry, stash entry or
    worktree index names it. Unneeded objects and temporary files modified after the
    expiry date are kept, so a `git add` running meanwhile loses nothing. To free the
    objects of a deleted branch now: `git reflog expire --expire=now --all`, then
    `git theta gc --prune=now`. Prints each deleted file and the space freed.
    """
    from git_theta import gc as gc_lib
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    result = gc_lib.gc(repo, prune, dry_run, Progress())
    verb = "would delete" if dry_run else "deleted"
    for item in result.deleted:
        name = gc_lib.display(item.name, repo.top)
        click.echo(f"{verb} {item.kind} {name} ({size_text(item.size)})")
    kept = f"; {result.kept_recent} newer than the expiry kept" if result.kept_recent else ""
    if dry_run:
        report(f"would free {size_text(result.freed)}{kept}")
    elif not result.failed:
        report(f"freed {size_text(result.freed)} ({len(result.deleted)} files){kept}")
    else:  # one line: the first file and why (a read-only store fails them all alike)
        from git_theta.errors import describe_os_error

        what, exc = result.failed[0]
        others = len(result.failed) - 1
        more = f" and {others} other file{'s' if others != 1 else ''}" if others else ""
        report(
            f"error: could not delete {what}{more} (freed {size_text(result.freed)}): "
            f"{describe_os_error(exc)}"
        )
        sys.exit(1)


@click.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
def squash(paths: tuple[str, ...]) -> None:
    """Store the staged checkpoints' tensors whole again, without chains of updates.

    Every tensor of the checkpoints in the index (or those PATHs name) that is stored as
    a chain of updates (xor, sparse) is rebuilt, checked against its hash and stored
    dense, and the new manifest is staged; the tensors do not change. Commit to record
    it. Once no kept commit needs the old chains (see `git theta gc`), their objects can
    be deleted. Prints one line per checkpoint.
    """
    from git_theta import squash as squash_lib
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    for item in squash_lib.squash(repo, list(paths)):
        if item.tensors:
            plural = "s" if item.tensors != 1 else ""
            click.echo(
                f"{item.path}: {item.tensors} tensor{plural} stored whole (chains of up to "
                f"{item.deepest} update{'s' if item.deepest != 1 else ''}); commit to record it"
            )
        else:
            click.echo(f"{item.path}: every tensor is already stored whole")
