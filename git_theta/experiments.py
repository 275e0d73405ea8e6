"""Commits from a training loop, and the table of runs they make.

``save`` stores a checkpoint's objects and makes a commit on a branch without touching the
work tree or any index but a temporary one: the branch's tree with the checkpoint's
manifest in place, a message with the run's metadata as trailers (``Theta-<key>: <JSON>``),
and a compare-and-swap of the branch ref, so a concurrent ``save`` to another branch never
interferes and one to the same branch is retried on its new tip. ``runs`` reads every
branch's latest commit back as a row: branch, commit, date, metadata.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from git_theta.errors import GitError, UsageError
from git_theta.repo import Repo

TRAILER = "Theta-"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ATTEMPTS = 5


@dataclass(frozen=True)
class Run:
    """A branch and its latest commit's metadata."""

    branch: str
    commit: str
    date: str  # ISO 8601, the committer date
    subject: str
    metadata: dict[str, Any]


def trailers(metadata: dict[str, Any] | None) -> str:
    """The metadata as commit trailers, one per key, each value its JSON."""
    lines = []
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise UsageError(
                f"metadata key {key!r} cannot be a commit trailer: use letters, digits, "
                "`_`, `.` and `-`"
            )
        try:
            text = json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"metadata `{key}` is not JSON ({exc}): pass plain values") from None
        lines.append(f"{TRAILER}{key}: {text}")
    return "\n".join(lines)


def parse_trailers(message: str) -> dict[str, Any]:
    """The metadata ``trailers`` wrote into a commit message (other lines ignored)."""
    found: dict[str, Any] = {}
    for line in message.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.startswith(TRAILER) and _KEY.match(key[len(TRAILER) :]):
            try:
                found[key[len(TRAILER) :]] = json.loads(value)
            except ValueError:
                continue
    return found


def _tip(repo: Repo, ref: str) -> str | None:
    proc = repo.git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _checked_out(repo: Repo) -> str | None:
    proc = repo.git(["symbolic-ref", "--quiet", "HEAD"], check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def save_file(
    repo: Repo,
    file: Path,
    path: str,
    branch: str,
    message: str,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Commit the checkpoint ``file`` as ``path`` on ``branch`` (made from HEAD when it does
    not exist); returns the commit id."""
    from git_theta import filter as theta_filter

    ref = f"refs/heads/{branch}"
    if repo.git(["check-ref-format", ref], check=False).returncode != 0:
        raise UsageError(f"`{branch}` is not a valid branch name")
    if not repo.bare and _checked_out(repo) == ref:
        raise UsageError(
            f"`{branch}` is checked out here, and save never touches the work tree: save to "
            "another branch, or `git add` and `git commit` the file"
        )
    text = message.rstrip() + ("\n\n" + trailers(metadata) if metadata else "") + "\n"
    for _ in range(_ATTEMPTS):
        tip = _tip(repo, ref)
        parent = tip or _tip(repo, "HEAD")
        previous = None
        if parent is not None:
            blob = repo.git(["cat-file", "blob", f"{parent}:{path}"], check=False)
            previous = blob.stdout if blob.returncode == 0 else None
        manifest = theta_filter.clean(file, previous, repo.store, repo.config, name=path)
        tree = _tree_with(repo, parent, path, manifest)
        commit = repo.git(
            ["commit-tree", tree, *(["-p", parent] if parent else []), "-F", "-"],
            input=text.encode(),
        )
        sha = commit.stdout.decode().strip()
        # the ref moves only if it is still where this commit was made from
        zero = "0" * (64 if repo.object_format == "sha256" else 40)
        if repo.git(["update-ref", ref, sha, tip or zero], check=False).returncode == 0:
            return sha
    raise GitError(f"`{branch}` kept moving while saving to it ({_ATTEMPTS} attempts)")


def _tree_with(repo: Repo, parent: str | None, path: str, manifest: bytes) -> str:
    """``parent``'s tree with ``manifest`` at ``path``, built in a temporary index; the
    path must be one that tree's ``.gitattributes`` gives to git-theta."""
    blob = repo.git(["hash-object", "-w", "--stdin"], input=manifest).stdout.decode().strip()
    with tempfile.TemporaryDirectory(prefix="theta-save-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if parent:
            _git_env(repo, ["read-tree", parent], env)
        _git_env(repo, ["update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"], env)
        attr = _git_env(repo, ["check-attr", "--cached", "filter", "--", path], env)
        if not attr.rstrip().endswith(": filter: theta"):
            raise UsageError(
                f"`{path}` is not tracked by git-theta in that branch's .gitattributes: run "
                f"`git theta track {path}` and commit .gitattributes first"
            )
        return _git_env(repo, ["write-tree"], env).strip()


def _git_env(repo: Repo, args: list[str], env: dict[str, str]) -> str:
    from git_theta.gitio import git

    return git.run(args, repo.top, env=env).stdout.decode()


def runs(repo: Repo, pattern: str | None = None) -> list[Run]:
    """Every branch (matching the glob ``pattern``) with its latest commit's metadata."""
    listing = repo.git(
        [
            "for-each-ref",
            "--format=%(refname:short)%00%(objectname)%00%(committerdate:iso-strict)%00"
            "%(contents)%00%00",
            "refs/heads",
        ]
    ).stdout.decode(errors="replace")
    found = []
    for record in listing.split("\0\0"):
        fields = record.lstrip("\n").split("\0")
        if len(fields) < 4:
            continue
        branch, commit, date, message = fields[:4]
        if pattern and not fnmatch.fnmatchcase(branch, pattern):
            continue
        subject = message.split("\n", 1)[0]
        found.append(Run(branch, commit, date, subject, parse_trailers(message)))
    return found


def serialize(state: Any, path: str, out: Path) -> None:
    """Write ``state`` to ``out`` in the format ``path``'s extension names."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        import torch

        torch.save(state, out)
    elif suffix == ".safetensors":
        values = list(state.values()) if isinstance(state, dict) else []
        if values and type(values[0]).__module__.startswith("torch"):
            from safetensors.torch import save_file
        else:
            from safetensors.numpy import save_file  # type: ignore[assignment]
        save_file(state, str(out))
    elif suffix == ".npz":
        import numpy as np

        with open(out, "wb") as f:
            np.savez(f, **state)
    elif suffix == ".npy":
        import numpy as np

        with open(out, "wb") as f:
            np.save(f, state)
    else:
        raise UsageError(
            f"`{path}`: save writes .pt/.pth/.bin/.ckpt (torch.save), .safetensors, .npz or "
            ".npy; name the file with one of these"
        )
