"""Registering git-theta's filter and merge drivers in git config, and removing them again."""

from __future__ import annotations

from pathlib import Path

from git_theta.errors import UsageError
from git_theta.gitio import git

CONFIG_KEYS = {
    "filter.theta.process": "git-theta filter-process",
    "filter.theta.clean": "git-theta clean %f",
    "filter.theta.smudge": "git-theta smudge %f",
    "filter.theta.required": "true",
    "merge.theta.name": "git-theta: merge checkpoints tensor by tensor",
    "merge.theta.driver": "git-theta merge-driver %O %A %B %P",
    # the inner merge of several merge bases (a criss-cross) keeps a conflict a conflict:
    # a virtual base silently made of one side would let the outer merge drop the other
    "merge.theta.recursive": "binary",
    "diff.theta.command": "git-theta diff-driver",
    "diff.theta.textconv": "git-theta textconv",
    "diff.theta.cachetextconv": "true",
}


def _scope_args(scope: str) -> list[str]:
    if scope not in ("global", "local", "system"):
        raise UsageError(f"unknown config scope {scope!r}")
    return [f"--{scope}"]


def install(scope: str, top: Path | None) -> list[str]:
    """Write the filter driver to git config at ``scope`` (``local``: of the repository at
    ``top``); returns the keys written."""
    git.require_lfs()
    for key, value in CONFIG_KEYS.items():
        git.run(["config", *_scope_args(scope), key, value], top)
    return list(CONFIG_KEYS)


def uninstall(scope: str, top: Path | None) -> list[str]:
    """Remove the keys ``install`` wrote (only while they still hold its values)."""
    removed = []
    for key, value in CONFIG_KEYS.items():
        current = git.run(["config", *_scope_args(scope), "--get", key], top, check=False)
        if current.returncode == 0 and current.stdout.decode().strip() == value:
            git.run(["config", *_scope_args(scope), "--unset", key], top)
            removed.append(key)
    for section in ("filter.theta", "merge.theta", "diff.theta"):
        left = git.run(
            ["config", *_scope_args(scope), "--get-regexp", f"^{section.replace('.', '[.]')}[.]"],
            top,
            check=False,
        )
        if left.returncode != 0:  # nothing of the section left: drop its empty header
            git.run(["config", *_scope_args(scope), "--remove-section", section], top, check=False)
    return removed


def is_installed(values: dict[str, str]) -> bool:
    """Whether git config ``values`` (``git.read_config``) configure git-theta's filter."""
    return bool(values.get("filter.theta.process", "").strip())
