"""Moving objects to and from a remote through git-lfs itself.

Going through ``git lfs`` keeps every git-lfs setting working as users expect: ``lfs.url``
and ``.lfsconfig``, credential helpers, ssh, ``lfs.concurrenttransfers``.

- Upload: ``git lfs push --object-id <remote> --stdin`` with the oids.
- Download: git-lfs fetches by ref, not by oid, so we write a throwaway commit whose tree
  holds one LFS pointer per needed object (blobs, tree and commit in the object database
  only; no ref, no index or work tree change) and run ``git lfs fetch <remote> <commit>``:
  one batch request for all of them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from git_theta.errors import GitError
from git_theta.gitio import git

POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def default_remote(top: Path) -> str:
    """The remote git-lfs would use: ``lfs.remote.default``, the branch's upstream, ``origin``,
    or the only remote there is."""
    configured = git.run(["config", "--get", "lfs.remote.default"], top, check=False)
    if configured.returncode == 0 and configured.stdout.strip():
        return configured.stdout.decode().strip()
    branch = git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], top, check=False)
    if branch.returncode == 0:
        upstream = git.run(
            ["config", "--get", f"branch.{branch.stdout.decode().strip()}.remote"],
            top,
            check=False,
        )
        if upstream.returncode == 0 and upstream.stdout.strip():
            return upstream.stdout.decode().strip()
    remotes = git.run(["remote"], top, check=False).stdout.decode().split()
    if "origin" in remotes or not remotes:
        return "origin"
    return remotes[0] if len(remotes) == 1 else "origin"


def has_endpoint(remote: str, top: Path) -> bool:
    """Whether git-lfs has somewhere to talk to for ``remote`` (a remote or an lfs.url)."""
    if remote in git.run(["remote"], top, check=False).stdout.decode().split():
        return True
    if "://" in remote or remote.startswith(("/", ".")):  # a URL or path used as a remote
        return True
    if git.run(["config", "--get", "lfs.url"], top, check=False).returncode == 0:
        return True
    lfsconfig = top / ".lfsconfig"
    return (
        lfsconfig.is_file()
        and git.run(
            ["config", "-f", str(lfsconfig), "--get", "lfs.url"], top, check=False
        ).returncode
        == 0
    )


def remote_url(remote: str, top: Path) -> str:
    """The LFS endpoint git-lfs uses for ``remote`` (for messages), or the remote's URL."""
    proc = git.run(["lfs", "env"], top, check=False)
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("Endpoint=") or line.startswith(f"Endpoint ({remote})="):
            return line.split("=", 1)[1].split(" (auth=")[0]
    url = git.run(["remote", "get-url", remote], top, check=False)
    return url.stdout.decode().strip() or remote


def _lfs(
    args: list[str], top: Path, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git lfs ARGS``; its progress reaches the terminal when stderr is one."""
    show = sys.stderr.isatty()
    return subprocess.run(
        ["git", "lfs", *args],
        cwd=top,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if not show else sys.stderr,
        stderr=None if show else subprocess.PIPE,
    )


def _reason(stderr: bytes | None) -> str:
    """git-lfs's own words, most specific first: its last line is often only a summary
    ("failed to fetch some objects"), the cause (connection refused, not found) comes before."""
    lines = [ln.strip() for ln in (stderr or b"").decode(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Downloading", "Uploading", "fetch:"))]
    return "; ".join(dict.fromkeys(lines))[-600:]


def push(remote: str, oids: Iterable[str], top: Path) -> None:
    """Upload objects to ``remote``'s LFS server; raises GitError with git-lfs's reason."""
    payload = "".join(oid + "\n" for oid in oids).encode()
    if not payload:
        return
    proc = _lfs(["push", "--object-id", remote, "--stdin"], top, input=payload)
    if proc.returncode != 0:
        raise GitError("git lfs push failed", _reason(proc.stderr))


def fetch(remote: str, objects: dict[str, int], top: Path) -> None:
    """Download ``objects`` (oid -> size) from ``remote`` in one batch."""
    if not objects:
        return
    oids = sorted(objects)
    with tempfile.TemporaryDirectory(prefix="theta-pointers-") as tmp:
        paths = []
        for oid in oids:
            path = Path(tmp) / oid
            path.write_text(POINTER.format(oid=oid, size=objects[oid]))
            paths.append(str(path))
        listing = "".join(p + "\n" for p in paths).encode()
        blobs = (
            git.run(["hash-object", "-w", "--no-filters", "--stdin-paths"], top, input=listing)
            .stdout.decode()
            .split()
        )
    entries = [f"100644 blob {blob}\t{oid}\n" for blob, oid in zip(blobs, oids, strict=True)]
    tree = git.run(["mktree"], top, input="".join(entries).encode()).stdout.decode().strip()
    commit = (
        git.run(
            ["commit-tree", tree, "-m", "git-theta fetch"],
            top,
            env={
                "GIT_AUTHOR_NAME": "git-theta",
                "GIT_AUTHOR_EMAIL": "git-theta@localhost",
                "GIT_COMMITTER_NAME": "git-theta",
                "GIT_COMMITTER_EMAIL": "git-theta@localhost",
            },
        )
        .stdout.decode()
        .strip()
    )
    proc = _lfs(["fetch", "--include=*", "--exclude=", remote, commit], top)
    if proc.returncode != 0:
        raise GitError("git lfs fetch failed", _reason(proc.stderr))
