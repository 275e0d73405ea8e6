"""git-theta's pre-push hook, installed beside whatever hook was there.

The hook file git runs is ours; a hook that was there before (git-lfs's own, or the user's)
is moved to ``pre-push.pre-theta`` and run after ours with the same arguments and input.
When nothing was there but the repository uses git-lfs, ``git lfs pre-push`` runs instead,
so git-lfs's files still reach the server. Uninstall puts the old hook back.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from git_theta.errors import HookError

MARKER = "# git-theta pre-push hook"
CHAINED_SUFFIX = ".pre-theta"
HOOK = f"""#!/bin/sh
{MARKER}: uploads the tensor objects the pushed commits need, then runs the
# hook that was here before (saved as pre-push{CHAINED_SUFFIX}). `git theta uninstall` restores it.
command -v git-theta >/dev/null 2>&1 || {{
  echo >&2 "git-theta is not on PATH, but this repository's pre-push hook needs it: install git-theta, or remove .git/hooks/pre-push"
  exit 2
}}
exec git-theta hook pre-push "$@"
"""


def _is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def install_hook(hooks_dir: Path, common_dir: Path) -> bool:
    """Install the pre-push hook in ``hooks_dir`` unless it is there; returns whether
    anything changed. Raises HookError when that would lose another hook, or when hooks
    come from outside the repository's ``common_dir`` (``core.hooksPath``)."""
    directory = hooks_dir
    hook = directory / "pre-push"
    if _is_ours(hook):
        return False
    manual = f'make {hook} run `git-theta hook pre-push "$@"`, or pushes will not upload tensors'
    if not directory.resolve().is_relative_to(common_dir.resolve()):
        raise HookError(
            f"hooks come from core.hooksPath ({directory}), which git-theta "
            f"does not change: {manual}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    chained = directory / ("pre-push" + CHAINED_SUFFIX)
    if hook.exists() or hook.is_symlink():
        if chained.exists() or chained.is_symlink():
            if not hook.is_file() or chained.read_bytes() != hook.read_bytes():
                raise HookError(
                    f"{hook} replaced git-theta's hook and {chained} holds the "
                    f"one before it: merge them by hand and {manual}"
                )
            hook.unlink()  # the same hook put back (e.g. by `git lfs update --force`)
        else:
            os.replace(hook, chained)
    tmp = directory / ".pre-push.theta-tmp"
    tmp.write_text(HOOK)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, hook)
    return True


def uninstall_hook(hooks_dir: Path) -> bool:
    """Remove our hook and put back the one it replaced; returns whether anything changed."""
    hook = hooks_dir / "pre-push"
    if not _is_ours(hook):
        return False
    chained = hooks_dir / ("pre-push" + CHAINED_SUFFIX)
    if chained.exists() or chained.is_symlink():
        os.replace(chained, hook)
    else:
        hook.unlink()
    return True


def run_chained(hooks_dir: Path, top: Path, lfs_filter: bool, args: list[str], stdin: bytes) -> int:
    """Run the hook that was replaced (or ``git lfs pre-push`` when the repository uses
    git-lfs, ``lfs_filter``, and nothing was replaced); returns its exit code."""
    chained = hooks_dir / ("pre-push" + CHAINED_SUFFIX)
    if chained.exists() and os.access(chained, os.X_OK):
        command = [str(chained), *args]
    elif lfs_filter:
        command = ["git", "lfs", "pre-push", *args]
    else:
        return 0
    return subprocess.run(command, cwd=top, input=stdin, stdout=sys.stderr).returncode
