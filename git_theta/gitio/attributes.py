"""``.gitattributes`` lines for tracked checkpoints, and git's own matching of them."""

from __future__ import annotations

from pathlib import Path

from git_theta.errors import UsageError
from git_theta.gitio import git

ATTRIBUTES = "filter=theta diff=theta merge=theta -text"


def _attributes_file(top: Path) -> Path:
    return top / ".gitattributes"


def _root_pattern(pattern: str, prefix: str) -> str:
    """``pattern`` given in directory ``prefix`` (relative to the work tree root, "" at the
    root), as written in the root ``.gitattributes``."""
    if not pattern or any(c.isspace() for c in pattern) or pattern.startswith(("#", "!")):
        raise UsageError(
            f"pattern {pattern!r} cannot be written to .gitattributes "
            "(no whitespace, and it may not start with # or !)"
        )
    rel = prefix.strip("/")
    if not rel or pattern.startswith("/"):
        return pattern
    return f"/{rel}/{pattern}"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _is_theta_line(line: str, pattern: str) -> bool:
    fields = line.split()
    return bool(fields) and fields[0] == pattern and "filter=theta" in fields[1:]


def track(top: Path, prefix: str, patterns: list[str]) -> tuple[list[str], list[str]]:
    """Append a line per new pattern (given in directory ``prefix`` of the work tree at
    ``top``); returns (added patterns, already tracked patterns)."""
    path = _attributes_file(top)
    lines = _lines(path)
    added, present = [], []
    for raw in patterns:
        pattern = _root_pattern(raw, prefix)
        if any(line.split() == [pattern, *ATTRIBUTES.split()] for line in lines):
            present.append(pattern)
            continue
        lines.append(f"{pattern} {ATTRIBUTES}")
        added.append(pattern)
    if added:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return added, present


def untrack(top: Path, prefix: str, patterns: list[str]) -> list[str]:
    """Remove the git-theta lines of ``patterns``; raises UsageError for one not tracked."""
    path = _attributes_file(top)
    lines = _lines(path)
    removed = []
    for raw in patterns:
        pattern = _root_pattern(raw, prefix)
        kept = [line for line in lines if not _is_theta_line(line, pattern)]
        if len(kept) == len(lines):
            raise UsageError(f"{raw!r} is not tracked by git-theta in {path}")
        lines = kept
        removed.append(pattern)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return removed


def theta_paths(top: Path, paths: list[str]) -> list[str]:
    """Those of ``paths`` (relative to the work tree root) that git filters with git-theta."""
    if not paths:
        return []
    proc = git.run(
        ["check-attr", "-z", "--stdin", "filter"],
        top,
        input="".join(p + "\0" for p in paths).encode(),
    )
    fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    return [fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] == "theta"]


def candidate_files(top: Path) -> list[str]:
    """Files in the index or untracked-but-not-ignored, relative to the work tree root."""
    proc = git.run(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], top)
    return sorted({p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p})


def value(top: Path, path: str, attribute: str) -> str | None:
    """The value git gives ``attribute`` for ``path`` (None when unspecified or unset)."""
    proc = git.run(["check-attr", "-z", attribute, "--", path], top)
    fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    found = fields[2] if len(fields) >= 3 else "unspecified"
    return None if found in ("unspecified", "unset") else found
