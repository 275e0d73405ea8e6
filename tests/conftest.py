"""Shared fixtures: every test runs real git and git-lfs in temporary directories, with a
private HOME so the user's git config is never read or written."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Repo, git_env
from tests.lfs_server import LfsServer


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME with a minimal global git config; no system config."""
    home = tmp_path_factory.mktemp("home")
    for key, value in git_env(home).items():
        monkeypatch.setenv(key, value)
    for key in list(os.environ):
        if key.startswith("GIT_THETA_"):
            monkeypatch.delenv(key)
    return home


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    """A new repository with git-theta installed in its local config and `model.pt` tracked."""
    yield Repo.tracking(tmp_path / "repo")


@pytest.fixture(scope="session", autouse=True)
def _git_lfs_present() -> None:
    if subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0:
        pytest.fail("git-lfs is not installed: run scripts/setup.sh")


@pytest.fixture
def lfs_server(tmp_path_factory: pytest.TempPathFactory, isolated_git: Path) -> Iterator[LfsServer]:
    """A running giftless LFS server; clients in this test trust it without lock checks."""
    server = LfsServer(tmp_path_factory.mktemp("lfs"))
    subprocess.run(
        ["git", "config", "--global", f"lfs.{server.url}.locksverify", "false"], check=True
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shared(tmp_path: Path, lfs_server: LfsServer) -> Iterator[tuple[Repo, Path, LfsServer]]:
    """Repo A (git-theta installed globally, model.pt tracked, `.lfsconfig` pointing at the
    server, `origin` a bare repository), the bare remote's path and the server."""
    subprocess.run(["git", "theta", "install", "--global"], check=True, capture_output=True)
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    a = Repo.init(tmp_path / "a")
    a.git("remote", "add", "origin", str(bare))
    a.theta("track", "model.pt")
    (a.path / ".lfsconfig").write_text(f"[lfs]\n\turl = {lfs_server.url}\n")
    a.git("add", ".gitattributes", ".lfsconfig")
    a.git("commit", "-q", "-m", "track model.pt")
    yield a, bare, lfs_server
