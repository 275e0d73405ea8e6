"""Every command works the same in a SHA-256 repository and with index version 4: track,
add, commit, checkout, ls-files, push to a real LFS server (giftless) and clone. git-theta
reads the index and objects through git's plumbing, never by parsing git's files."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import Repo, assert_same_object, seeded_state_dict
from tests.lfs_server import LfsServer

KINDS = ["sha256", "index-v4"]


def _init(path: Path, kind: str, bare: bool = False) -> None:
    fmt = ["--object-format=sha256"] if kind == "sha256" else []
    subprocess.run(
        ["git", "init", "-q", *(["--bare"] if bare else []), *fmt, str(path)], check=True
    )
    if kind == "index-v4" and not bare:
        # every index this repository writes is version 4 (path-compressed entries)
        subprocess.run(["git", "-C", str(path), "config", "index.version", "4"], check=True)


def _index_version(repo: Repo) -> int:
    data = (repo.path / ".git" / "index").read_bytes()
    assert data[:4] == b"DIRC"
    return int.from_bytes(data[4:8], "big")


def _state(seed: int) -> dict[str, Any]:
    return seeded_state_dict(4, 16, seed=seed)


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_works(kind: str, tmp_path: Path, lfs_server: LfsServer) -> None:
    subprocess.run(["git", "theta", "install", "--global"], check=True, capture_output=True)
    bare = tmp_path / "remote.git"
    _init(bare, kind, bare=True)
    a = Repo(tmp_path / "a")
    _init(a.path, kind)
    a.git("remote", "add", "origin", str(bare))
    a.theta("track", "model.pt")
    (a.path / ".lfsconfig").write_text(f"[lfs]\n\turl = {lfs_server.url}\n")
    a.git("add", ".gitattributes", ".lfsconfig")
    a.git("commit", "-q", "-m", "track model.pt")

    first, second = _state(0), _state(0)
    second["layers.2.weight"] = torch.ones(16, 16)
    torch.save(first, a.path / "model.pt")
    a.commit_file("model.pt", "v1")
    torch.save(second, a.path / "model.pt")
    a.commit_file("model.pt", "v2")
    if kind == "sha256":
        assert len(a.git("rev-parse", "HEAD").stdout.strip()) == 64
    else:
        assert _index_version(a) == 4
    assert a.status() == ""
    assert len(a.objects()) == 5  # 4 tensors, then one changed

    listing = a.theta("ls-files")
    assert listing.stdout.startswith(f"{4:>8} {'4.0 KiB':>10} ")  # 4 tensors, 4096 bytes
    assert listing.stdout.endswith("  model.pt\n") and listing.stdout.count("\n") == 1
    assert listing.stderr == ""

    a.git("checkout", "-q", "HEAD~1", "--", "model.pt")
    assert_same_object(_load(a.path / "model.pt"), first)
    a.git("checkout", "-q", "HEAD", "--", "model.pt")
    assert_same_object(_load(a.path / "model.pt"), second)
    assert a.status() == ""

    push = a.git("push", "-q", "origin", "main")
    assert "git-theta: uploaded 5 objects to `origin`" in push.stderr
    assert lfs_server.objects() == a.objects()

    b = Repo(tmp_path / "b")
    proc = subprocess.run(
        ["git", "clone", "-q", str(bare), str(b.path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    if kind == "index-v4":
        b.git("config", "index.version", "4")
        b.git("update-index", "--index-version", "4")
        assert _index_version(b) == 4
    assert_same_object(_load(b.path / "model.pt"), second)
    assert b.status() == ""
    assert b.theta("ls-files").stdout == listing.stdout
    b.git("checkout", "-q", "HEAD~1", "--", "model.pt")
    assert_same_object(_load(b.path / "model.pt"), first)
