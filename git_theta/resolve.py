"""``git theta resolve``: finish a conflicted checkpoint merge with a merge method."""

from __future__ import annotations

from git_theta import merge
from git_theta.checkout import rebuild
from git_theta.errors import UsageError
from git_theta.history import Located
from git_theta.manifest import Manifest
from git_theta.methods import Method
from git_theta.repo import Repo
from git_theta.transfer import fetch_missing


def resolve(repo: Repo, path: str, method: Method) -> tuple[str, merge.Outcome]:
    """Merge the stages git recorded for ``path`` (given relative to where the repository
    was opened) with ``method``; when that resolves everything, write the checkpoint and
    stage it. Returns the path relative to the top and the outcome."""
    if method.name == "conflict":
        raise UsageError("`conflict` resolves nothing: name a method with --method")
    entries = [e for e in repo.index_entries([path]) if e.stage]
    if not entries:
        raise UsageError(
            f"`{path}` has no merge conflict to resolve (`git status` lists conflicted paths)"
        )
    full = entries[0].path
    if any(e.path != full for e in entries):
        raise UsageError(f"`{path}` names several conflicted files: name one")
    blobs = {e.stage: repo.git(["cat-file", "blob", e.blob]).stdout for e in entries}
    if 2 not in blobs or 3 not in blobs:
        raise UsageError(
            f"`{full}` was deleted on one side: take the side you want with "
            f"`git checkout --ours {full}` (or `--theirs`), or `git rm {full}`"
        )
    outcome = merge.merge(repo, full, blobs.get(1, b""), blobs[2], blobs[3], method)
    if outcome.manifest is None:
        return full, outcome
    # the work tree first (every object fetched, written through a temporary file): when
    # that fails, the index still records the conflict
    merged = Manifest.from_bytes(outcome.manifest)
    fetch_missing(repo, [Located(full, merged)])
    rebuild(repo, full, merged)
    mode = next(e.mode for e in entries if e.stage == 2)
    blob = (
        repo.git(["hash-object", "-w", "--stdin"], input=outcome.manifest).stdout.decode().strip()
    )
    # the path's entries (every stage) out, the merged one in at stage 0
    entries_in = f"0 {'0' * len(blob)}\t{full}\n{mode} {blob}\t{full}\n"
    repo.git(["update-index", "--index-info"], input=entries_in.encode())
    repo.git(["update-index", "-q", "--", full])  # the stat of the file just written
    return full, outcome
