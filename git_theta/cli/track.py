"""git theta track / untrack."""

from __future__ import annotations

from pathlib import Path

import click

from git_theta.cli.output import report
from git_theta.errors import HookError
from git_theta.gitio import attributes
from git_theta.repo import Repo


@click.command()
@click.argument("patterns", nargs=-1, required=True)
def track(patterns: tuple[str, ...]) -> None:
    """Store files matching PATTERNS with git-theta.

    Adds `PATTERN filter=theta diff=theta merge=theta -text` to the repository's root
    .gitattributes (patterns are git's: `model.pt`, `*.safetensors`, `ckpt/**`).
    """
    repo = Repo.open(Path.cwd())
    added, present = attributes.track(repo.top, repo.prefix, list(patterns))
    for pattern in added:
        report(f"tracking {pattern!r}")
    for pattern in present:
        report(f"{pattern!r} is already tracked")
    matched = repo.theta_paths(attributes.candidate_files(repo.top))
    if matched:
        report("files now stored with git-theta: " + ", ".join(matched))
        report("run `git add .gitattributes " + " ".join(matched) + "` to stage them")
    if not repo.filter_installed:
        report("warning: git-theta's filter is not configured here: run `git theta install`")
    try:
        repo.install_hook()
    except (HookError, OSError) as exc:
        report(f"warning: pre-push hook not installed: {exc}")


@click.command()
@click.argument("patterns", nargs=-1, required=True)
def untrack(patterns: tuple[str, ...]) -> None:
    """Stop storing files matching PATTERNS with git-theta.

    Removes their lines from .gitattributes; files already committed keep their history.
    """
    repo = Repo.open(Path.cwd())
    for pattern in attributes.untrack(repo.top, repo.prefix, list(patterns)):
        report(f"untracked {pattern!r}")
