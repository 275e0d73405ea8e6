"""git theta install / uninstall."""

from __future__ import annotations

from pathlib import Path

import click

from git_theta.cli.options import scope_option
from git_theta.errors import HookError
from git_theta.gitio import hooks
from git_theta.gitio import setup as setup_lib
from git_theta.repo import Repo


def _repo(scope: str) -> Repo | None:
    """The repository here for --local (raises NotARepositoryError outside one); None for
    --global, which concerns no repository."""
    return Repo.open(Path.cwd()) if scope == "local" else None


@click.command()
@scope_option
def install(scope: str) -> None:
    """Register git-theta's drivers in git config.

    Writes filter.theta.process (the long-running filter), filter.theta.clean and
    filter.theta.smudge (one-shot forms of the same code) and filter.theta.required; the
    merge driver (merge.theta.*) and the diff driver and textconv (diff.theta.*).
    Needs git-lfs. Default scope: --global. With --local, also installs the pre-push hook
    that uploads objects; under --global or --system each repository gets it the first
    time git-theta's filter runs there.
    """
    repo = _repo(scope)
    keys = setup_lib.install(scope, repo.top if repo else None)
    click.echo(f"git-theta installed ({scope} config: {', '.join(keys)})", err=True)
    if repo is not None:
        try:
            if repo.install_hook():
                click.echo(f"git-theta: pre-push hook installed in {repo.hooks_dir}", err=True)
        except (HookError, OSError) as exc:
            click.echo(f"git-theta: warning: pre-push hook not installed: {exc}", err=True)


@click.command()
@scope_option
def uninstall(scope: str) -> None:
    """Remove exactly what `git theta install` added to git config.

    With --local, also removes the pre-push hook, unless the filter is still configured
    at another scope. --global and --system touch no repository's hooks.
    """
    repo = _repo(scope)
    keys = setup_lib.uninstall(scope, repo.top if repo else None)
    # the hook stays while the filter is still configured at another scope: objects it
    # stores must still reach the remote on push
    if repo is not None:
        repo.reload_config()
        if not repo.filter_installed and hooks.uninstall_hook(repo.hooks_dir):
            click.echo(f"git-theta: pre-push hook removed from {repo.hooks_dir}", err=True)
    if keys:
        click.echo(f"git-theta uninstalled ({scope} config: removed {', '.join(keys)})", err=True)
    else:
        click.echo(f"git-theta was not installed in {scope} config; nothing removed", err=True)
