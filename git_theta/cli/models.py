"""`git theta registry`: versions and aliases of models, as tags (see git_theta/registry.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from git_theta.repo import Repo


def _repo() -> Repo:
    from git_theta.repo import Repo

    return Repo.open(Path.cwd(), bare_ok=True)


@click.group()
def registry() -> None:
    """Models by name and version: register, list, alias, push."""


@registry.command()
@click.argument("name")
@click.argument("version")
@click.argument("rev", default="HEAD")
@click.option("--path", "path", default=None, help="The checkpoint (default: the only one).")
def register(name: str, version: str, rev: str, path: str | None) -> None:
    """Tag REV (default HEAD) as VERSION (semantic: 1.2.0) of model NAME.

    Makes the annotated tag `models/NAME/VERSION`, carrying the checkpoint's path and the
    commit's metadata. An existing version is refused.
    """
    from git_theta import registry as registry_lib

    found = registry_lib.register(_repo(), name, version, rev, path)
    click.echo(f"registered {found.name} {found.version}: {found.path} at {found.commit[:12]}")


@registry.command("list")
@click.argument("name", required=False)
def list_versions(name: str | None) -> None:
    """Every registered version (of model NAME): version, commit, path, aliases, metadata."""
    from git_theta import registry as registry_lib

    for item in registry_lib.versions(_repo(), name):
        aliases = f" ({', '.join(item.aliases)})" if item.aliases else ""
        metadata = json.dumps(item.metadata, sort_keys=True) if item.metadata else ""
        line = f"{item.name} {item.version}{aliases}  {item.commit[:12]}  {item.path}  {metadata}"
        click.echo(line.rstrip())


@registry.command()
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version")
def alias(name: str, alias_name: str, version: str) -> None:
    """Point ALIAS (e.g. champion) of model NAME at VERSION; an alias moves, a version never."""
    from git_theta import registry as registry_lib

    registry_lib.alias(_repo(), name, alias_name, version)
    click.echo(f"{name} {alias_name} -> {version}")


@registry.command()
@click.argument("remote", default="origin")
def push(remote: str) -> None:
    """Send every version and alias to REMOTE (default origin), aliases forced (they move),
    with the objects their commits need."""
    from git_theta import registry as registry_lib

    registry_lib.push(_repo(), remote)
