"""Helpers for tests: a repository driven through real git, and seeded checkpoints."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIT_THETA = ["git", "theta"]


def git_env(home: Path) -> dict[str, str]:
    """Environment for a git run isolated from the machine's configuration."""
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test\n\temail = test@example.com\n"
        "[init]\n\tdefaultBranch = main\n"
        "[advice]\n\tdetachedHead = false\n"
    )
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    }


@dataclass
class Repo:
    """A work tree at ``path``; ``git``/``theta`` run commands there and check their exit."""

    path: Path

    @classmethod
    def init(cls, path: Path) -> Repo:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", str(path)], check=True)
        return cls(path)

    @classmethod
    def tracking(cls, path: Path, pattern: str = "model.pt") -> Repo:
        """A new repository with git-theta installed in its local config and ``pattern``
        tracked, its `.gitattributes` committed."""
        r = cls.init(path)
        r.theta("install", "--local")
        r.theta("track", pattern)
        r.commit_file(".gitattributes", f"track {pattern}")
        return r

    def run(
        self, *args: str, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            cwd=self.path,
            capture_output=True,
            input=input.decode() if input is not None else None,
            text=True,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}"
            )
        return proc

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args, check=check)

    def theta(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(*GIT_THETA, *args, check=check)

    def commit_file(self, name: str, message: str) -> str:
        self.git("add", name)
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def blob(self, rev_path: str) -> bytes:
        return subprocess.run(
            ["git", "cat-file", "blob", rev_path], cwd=self.path, capture_output=True, check=True
        ).stdout

    def objects(self) -> set[str]:
        """oids in the repository's LFS object store."""
        root = self.path / ".git" / "lfs" / "theta" / "objects"
        return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()

    def store_bytes(self) -> int:
        root = self.path / ".git" / "lfs" / "theta" / "objects"
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def status(self) -> str:
        return self.git("status", "--porcelain").stdout


# ----------------------------------------------------------------- checkpoints (torch)


def seeded_state_dict(n: int = 8, size: int = 64, seed: int = 0) -> dict[str, Any]:
    """A state dict of ``n`` float32 tensors of ``size``x``size``, from a seeded generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(size, size, generator=gen) for i in range(n)}


def assert_same_object(a: Any, b: Any, path: str = "") -> None:
    """Deep equality for torch.load results: same types, key order, dtypes, shapes and bits."""
    import torch

    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        assert a.requires_grad == b.requires_grad, f"{path}: requires_grad differs"
        ab = a.detach().reshape(-1).contiguous().view(torch.uint8)
        bb = b.detach().reshape(-1).contiguous().view(torch.uint8)
        assert torch.equal(ab, bb), f"{path}: tensor bytes differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same_object(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length differs"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_object(x, y, f"{path}/{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, f"{path}: NaN became {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the tree at ``path`` unwritable for the test's duration. root ignores file modes,
    so as root the tree is made immutable (``chattr +i``) instead."""
    import pytest

    if os.geteuid() == 0:
        proc = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True)
        if proc.returncode != 0:
            subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
            pytest.skip(f"cannot make {path} read-only here: {proc.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def on_a_terminal(
    args: list[str], cwd: Path, stream: str = "stdout", env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``args`` with its ``stream`` (stdout or stderr) on a new terminal; returns the
    exit code and what the terminal showed (raw: carriage returns kept)."""
    import pty

    main, tty = pty.openpty()
    other = subprocess.PIPE
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            stdout=tty if stream == "stdout" else other,
            stderr=tty if stream == "stderr" else other,
            env={**os.environ, **(env or {})},
        )
        os.close(tty)
        tty = -1
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if tty >= 0:
            os.close(tty)
        os.close(main)
    return proc.returncode, b"".join(chunks).decode()


def claiming(blob: bytes, words: int, keep_chunks: bool) -> bytes:
    """Object ``blob`` with a zarr.json that claims ``words`` words, keeping its chunks
    (or holding only its zarr.json): a hostile object."""
    import io
    import json
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "zarr.json":
                meta = json.loads(data)
                meta["shape"] = [words]
                data = json.dumps(meta).encode()
            elif not keep_chunks:
                continue
            new.writestr(info.filename, data)
    return out.getvalue()
