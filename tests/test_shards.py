"""A git command over several tracked checkpoints uses one long-running filter process."""

from __future__ import annotations

import os
import subprocess

import torch

from tests.helpers import Repo, assert_same_object, seeded_state_dict


def _filter_starts(repo: Repo, *args: str) -> int:
    env = {**os.environ, "GIT_TRACE": "1"}
    proc = subprocess.run(
        ["git", *args], cwd=repo.path, env=env, capture_output=True, text=True, check=True
    )
    return sum(
        "run_command: 'git-theta filter-process'" in line for line in proc.stderr.splitlines()
    )


def test_eight_shards_share_one_filter_process(repo: Repo) -> None:
    repo.theta("track", "shard-*.pt")
    shards = {f"shard-{i}.pt": seeded_state_dict(3, 16, seed=i) for i in range(8)}
    for name, state in shards.items():
        torch.save(state, repo.path / name)
    assert _filter_starts(repo, "add", ".gitattributes", *shards) == 1
    repo.git("commit", "-q", "-m", "8 shards")
    for name in shards:
        (repo.path / name).unlink()
    assert _filter_starts(repo, "checkout", "--", ".") == 1
    for name, state in shards.items():
        assert_same_object(torch.load(repo.path / name, weights_only=True), state)
    assert repo.status() == ""
