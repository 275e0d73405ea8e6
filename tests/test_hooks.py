"""The pre-push hook is installed beside other hooks and never silently lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from git_theta.gitio.hooks import CHAINED_SUFFIX, HOOK
from tests.helpers import Repo, assert_same_object, seeded_state_dict


def _hook(repo: Repo) -> Path:
    return repo.path / ".git" / "hooks" / "pre-push"


def test_hook_put_back_by_another_tool_is_reinstalled(repo: Repo) -> None:
    # git-lfs (`git lfs update --force`) writes its hook again over ours: the same content as
    # the hook already saved, so ours comes back and nothing is lost
    hook, chained = _hook(repo), _hook(repo).with_name("pre-push" + CHAINED_SUFFIX)
    lfs_hook = '#!/bin/sh\ngit lfs pre-push "$@"\n'
    chained.write_text(lfs_hook)
    hook.write_text(lfs_hook)
    proc = repo.theta("track", "other.pt")
    assert "warning" not in proc.stderr
    assert hook.read_text() == HOOK
    assert chained.read_text() == lfs_hook


def test_conflicting_hooks_are_reported_not_overwritten(repo: Repo) -> None:
    hook, chained = _hook(repo), _hook(repo).with_name("pre-push" + CHAINED_SUFFIX)
    chained.write_text("#!/bin/sh\necho old\n")
    hook.write_text("#!/bin/sh\necho new\n")
    proc = repo.theta("track", "other.pt")
    assert proc.returncode == 0
    warning = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warning == [
        f"git-theta: warning: pre-push hook not installed: {hook} replaced git-theta's hook "
        f"and {chained} holds the one before it: merge them by hand and make {hook} run "
        '`git-theta hook pre-push "$@"`, or pushes will not upload tensors'
    ]
    assert hook.read_text() == "#!/bin/sh\necho new\n"
    assert chained.read_text() == "#!/bin/sh\necho old\n"
    # the filter says the same on stderr and the checkout still works
    state = seeded_state_dict(2, 8)
    torch.save(state, repo.path / "model.pt")
    proc = repo.git("add", "model.pt")
    assert "git-theta: warning: pre-push hook not installed: " in proc.stderr
    assert hook.read_text() == "#!/bin/sh\necho new\n"


def test_hooks_path_outside_git_dir_is_left_alone(repo: Repo) -> None:
    husky = repo.path / ".husky"
    husky.mkdir()
    (husky / "pre-push").write_text("#!/bin/sh\nnpm test\n")
    repo.git("config", "core.hooksPath", ".husky")
    proc = repo.theta("track", "other.pt")
    assert (husky / "pre-push").read_text() == "#!/bin/sh\nnpm test\n"
    assert sorted(p.name for p in husky.iterdir()) == ["pre-push"]
    assert f"hooks come from core.hooksPath ({husky}), which git-theta does not change" in (
        proc.stderr
    )


def test_checkout_paths_are_relative_to_the_current_directory(repo: Repo) -> None:
    repo.theta("track", "sub/model.pt")
    (repo.path / "sub").mkdir()
    state = seeded_state_dict(2, 8)
    torch.save(state, repo.path / "sub" / "model.pt")
    repo.git("add", ".gitattributes", "sub/model.pt")
    repo.git("commit", "-q", "-m", "sub")
    (repo.path / "sub" / "model.pt").unlink()
    subprocess.run(
        ["git", "checkout", "--", "sub/model.pt"],
        cwd=repo.path,
        check=True,
        env={**os.environ, "GIT_THETA_SKIP_SMUDGE": "1"},
    )
    assert (repo.path / "sub" / "model.pt").read_bytes().startswith(b"{")
    proc = subprocess.run(
        ["git", "theta", "checkout", "model.pt"],
        cwd=repo.path / "sub",
        capture_output=True,
        text=True,
    )
    assert (proc.returncode, proc.stderr) == (0, "git-theta: rebuilt sub/model.pt\n")
    assert_same_object(torch.load(repo.path / "sub" / "model.pt", weights_only=True), state)
    assert repo.status() == ""
