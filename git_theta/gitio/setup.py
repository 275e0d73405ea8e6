"""Registering git-theta's filter driver in git config, and removing it again."""

from __future__ import annotations

from pathlib import Path

from git_theta.errors import UsageError
from git_theta.gitio import git

FILTER_KEYS = {
    "filter.theta.process": "git-theta filter-process",
    "filter.theta.clean": "git-theta clean %f",
    "filter.theta.smudge": "git-theta smudge %f",
    "filter.theta.required": "true",
}


def _scope_args(scope: str) -> list[str]:
    if scope not in ("global", "local", "system"):
        raise UsageError(f"unknown config scope {scope!r}")
    return [f"--{scope}"]


def install(scope: str, cwd: Path | str = ".") -> list[str]:
    """Write the filter driver to git config at ``scope``; returns the keys written."""
    git.require_lfs()
    if scope == "local":
        git.toplevel(cwd)
    for key, value in FILTER_KEYS.items():
        git.run(["config", *_scope_args(scope), key, value], cwd=cwd)
    return list(FILTER_KEYS)


def uninstall(scope: str, cwd: Path | str = ".") -> list[str]:
    """Remove the keys ``install`` wrote (only while they still hold its values)."""
    if scope == "local":
        git.toplevel(cwd)
    removed = []
    for key, value in FILTER_KEYS.items():
        current = git.run(["config", *_scope_args(scope), "--get", key], cwd=cwd, check=False)
        if current.returncode == 0 and current.stdout.decode().strip() == value:
            git.run(["config", *_scope_args(scope), "--unset", key], cwd=cwd)
            removed.append(key)
    section = git.run(
        ["config", *_scope_args(scope), "--get-regexp", r"^filter\.theta\."], cwd=cwd, check=False
    )
    if section.returncode != 0:  # nothing of the section left: drop its empty header
        git.run(
            ["config", *_scope_args(scope), "--remove-section", "filter.theta"],
            cwd=cwd,
            check=False,
        )
    return removed


def is_installed(cwd: Path | str = ".") -> bool:
    """Whether the filter driver is configured for the repository around ``cwd``."""
    proc = git.run(["config", "--get", "filter.theta.process"], cwd=cwd, check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def in_repository(cwd: Path | str = ".") -> bool:
    """Whether ``cwd`` is inside a git work tree."""
    proc = git.run(["rev-parse", "--is-inside-work-tree"], cwd=cwd, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == b"true"
