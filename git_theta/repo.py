"""This repository: opened once per command or filter process, handed to every operation.

A ``Repo`` holds what the operations share, each found once: the work tree's top, the git
directories (worktrees share the common one), the object format, the git config (read in
one ``git config --list``) and the settings parsed from it, the object store, the index
and the pre-push hook. It knows nothing of tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from git_theta.errors import NotARepositoryError, ThetaError
from git_theta.gitio import attributes, git, hooks
from git_theta.gitio.git import IndexEntry
from git_theta.store import ObjectStore

if TYPE_CHECKING:
    import subprocess

    from git_theta.config import Config


class Repo:
    """A git work tree, as git-theta sees it."""

    def __init__(self, location: git.Location, git_config: dict[str, str]) -> None:
        self.location = location
        self.top = location.top
        self.git_dir = location.git_dir
        self.common_dir = location.common_dir
        self.hooks_dir = location.hooks_dir
        self.object_format = location.object_format
        self.git_config = git_config
        self._hook_checked = False
        self.source_url: str | None = None  # the git URL a cached clone (``api``) is of

    @classmethod
    def open(cls, start: Path | str, bare_ok: bool = False) -> Repo:
        """The repository whose work tree holds ``start`` (or, when ``bare_ok``, the bare
        repository at ``start``); raises NotARepositoryError."""
        location = git.locate(Path(start), bare_ok)
        return cls(location, git.read_config(location.top))

    @property
    def bare(self) -> bool:
        """Whether this is a bare repository (no work tree; ``top`` is its git directory)."""
        return self.location.bare

    @classmethod
    def find(cls, start: Path | str) -> Repo | None:
        """The repository around ``start``, or None outside any work tree."""
        try:
            return cls.open(start)
        except NotARepositoryError:
            return None

    @property
    def start_dir(self) -> Path:
        """The directory the repository was opened from (paths a user gives are relative
        to it)."""
        return self.top / self.location.prefix

    @property
    def prefix(self) -> str:
        """``start_dir`` relative to the top ("" at the top, else ``a/b/``)."""
        return self.location.prefix

    @cached_property
    def config(self) -> Config:
        """git-theta's settings, parsed from this repository's git config on first use."""
        from git_theta import config  # the codec's names come with numpy: only when needed

        return config.load(self.git_config)

    @cached_property
    def lfs_dir(self) -> Path:
        """Where git-lfs keeps objects here: ``lfs.storage`` (relative to the common git
        directory) or ``<common dir>/lfs``."""
        configured = self.git_config.get("lfs.storage", "").strip()
        if configured:
            path = Path(configured).expanduser()
            return path if path.is_absolute() else self.common_dir / path
        return self.common_dir / "lfs"

    @cached_property
    def store(self) -> ObjectStore:
        """The object store (git-lfs's layout under ``lfs_dir``)."""
        return ObjectStore(self.lfs_dir)

    def git(
        self, args: list[str], input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """``git ARGS`` run at the top; raises GitError when it fails and ``check``."""
        return git.run(args, self.top, input=input, check=check)

    def reload_config(self) -> None:
        """Read git config again (after a command changed it)."""
        self.git_config = git.read_config(self.top)
        self.__dict__.pop("config", None)

    # ------------------------------------------------------------------ index and paths

    def index_blob(self, path: str) -> bytes | None:
        """The content of ``path``'s blob in the index (stage 0), or None if not there."""
        return git.index_blob(self.top, path)

    def index_entries(self, pathspecs: Iterable[str] | None = None) -> list[IndexEntry]:
        """Index entries (every stage): the whole index, or those matching ``pathspecs``
        read relative to ``start_dir`` as git reads a user's (none: all of ``start_dir``)."""
        if pathspecs is None:
            return git.index_entries(self.top)
        return git.index_entries(self.top, pathspecs, at=self.start_dir)

    def stage(self, path: str, mode: str, content: bytes) -> None:
        """Write ``content`` as a blob and stage it at ``path`` (stage 0, file ``mode``),
        with no filter applied (it is the manifest itself)."""
        blob = self.git(["hash-object", "-w", "--stdin"], input=content).stdout.decode().strip()
        self.git(["update-index", "--index-info"], input=f"{mode} {blob}\t{path}\n".encode())

    def theta_paths(self, paths: Iterable[str]) -> list[str]:
        """Those of ``paths`` (relative to the top) that git filters with git-theta."""
        return attributes.theta_paths(self.top, sorted(set(paths)))

    # ------------------------------------------------------------------ set-up

    @property
    def filter_installed(self) -> bool:
        """Whether git runs git-theta's filter here (configured at any scope)."""
        from git_theta.gitio import setup

        return setup.is_installed(self.git_config)

    @property
    def uses_git_lfs(self) -> bool:
        """Whether git-lfs's own filter is configured here."""
        return "filter.lfs.process" in self.git_config

    def install_hook(self) -> bool:
        """Install the pre-push hook unless it is there; returns whether anything changed.
        Raises HookError (or OSError) when it cannot be installed without losing another."""
        return hooks.install_hook(self.hooks_dir, self.common_dir)

    def ensure_hook(self) -> str:
        """Install the pre-push hook unless it is there (checked once per ``Repo``); returns
        a warning for people when it cannot be installed, for which nothing must fail."""
        if self._hook_checked:
            return ""
        self._hook_checked = True
        try:
            self.install_hook()
        except (OSError, ThetaError) as exc:
            return f"pre-push hook not installed: {exc}"
        return ""
