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
from git_theta.gitio import git

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


def hooks_dir(cwd: Path | str = ".") -> Path:
    """Where git looks for hooks (``core.hooksPath`` or ``.git/hooks``)."""
    path = git.output(["rev-parse", "--path-format=absolute", "--git-path", "hooks"], cwd=cwd)
    return Path(path)


def _is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def install_hook(cwd: Path | str = ".") -> bool:
    """Install the pre-push hook unless it is there; returns whether anything changed."""
    directory = hooks_dir(cwd)
    hook = directory / "pre-push"
    if _is_ours(hook):
        return False
    manual = f'make {hook} run `git-theta hook pre-push "$@"`, or pushes will not upload tensors'
    if not directory.resolve().is_relative_to(git.common_dir(cwd).resolve()):
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


def uninstall_hook(cwd: Path | str = ".") -> bool:
    """Remove our hook and put back the one it replaced; returns whether anything changed."""
    directory = hooks_dir(cwd)
    hook = directory / "pre-push"
    if not _is_ours(hook):
        return False
    chained = directory / ("pre-push" + CHAINED_SUFFIX)
    if chained.exists() or chained.is_symlink():
        os.replace(chained, hook)
    else:
        hook.unlink()
    return True


def run_chained(args: list[str], stdin: bytes, cwd: Path | str = ".") -> int:
    """Run the hook that was replaced (or ``git lfs pre-push`` when the repository uses
    git-lfs and nothing was replaced); returns its exit code."""
    chained = hooks_dir(cwd) / ("pre-push" + CHAINED_SUFFIX)
    if chained.exists() and os.access(chained, os.X_OK):
        command = [str(chained), *args]
    elif git.run(["config", "--get", "filter.lfs.process"], cwd=cwd, check=False).returncode == 0:
        command = ["git", "lfs", "pre-push", *args]
    else:
        return 0
    return subprocess.run(command, cwd=cwd, input=stdin, stdout=sys.stderr).returncode
