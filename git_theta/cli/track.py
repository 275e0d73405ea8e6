"""git theta track / untrack."""

from __future__ import annotations

import click

from git_theta.cli import report
from git_theta.errors import HookError
from git_theta.gitio import attributes, hooks
from git_theta.gitio.setup import is_installed


@click.command()
@click.argument("patterns", nargs=-1, required=True)
def track(patterns: tuple[str, ...]) -> None:
    """Store files matching PATTERNS with git-theta.

    Adds `PATTERN filter=theta diff=theta merge=theta -text` to the repository's root
    .gitattributes (patterns are git's: `model.pt`, `*.safetensors`, `ckpt/**`).
    """
    added, present = attributes.track(list(patterns))
    for pattern in added:
        report(f"tracking {pattern!r}")
    for pattern in present:
        report(f"{pattern!r} is already tracked")
    matched = attributes.theta_paths(attributes.candidate_files())
    if matched:
        report("files now stored with git-theta: " + ", ".join(matched))
        report("run `git add .gitattributes " + " ".join(matched) + "` to stage them")
    if not is_installed():
        report("warning: git-theta's filter is not configured here: run `git theta install`")
    try:
        hooks.install_hook()
    except (HookError, OSError) as exc:
        report(f"warning: pre-push hook not installed: {exc}")


@click.command()
@click.argument("patterns", nargs=-1, required=True)
def untrack(patterns: tuple[str, ...]) -> None:
    """Stop storing files matching PATTERNS with git-theta.

    Removes their lines from .gitattributes; files already committed keep their history.
    """
    for pattern in attributes.untrack(list(patterns)):
        report(f"untracked {pattern!r}")
