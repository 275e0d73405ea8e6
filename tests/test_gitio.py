"""git plumbing helpers, against a real repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from git_theta.gitio import git


def _blob(repo: Path, data: bytes) -> str:
    return (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=repo,
            input=data,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )


def test_blobs_starting_with_keeps_only_matching_blobs(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    manifest = b'{"git_theta": 1}\n'
    big = bytes(range(256)) * 20_000  # 5 MB, read past in pieces
    shas = [_blob(tmp_path, data) for data in (big, manifest, b"", b"{", b"x{")]
    missing = "0" * 39 + "1"
    found = dict(git.blobs_starting_with([*shas, missing], b"{", tmp_path))
    assert found == {shas[1]: manifest, shas[3]: b"{"}


def test_blobs_starting_with_can_stop_early(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shas = [_blob(tmp_path, b"{%d}" % i) for i in range(2000)]
    first = next(git.blobs_starting_with(shas, b"{", tmp_path))
    assert first == (shas[0], b"{0}")
