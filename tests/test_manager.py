"""The checkpoint manager: every step a commit on its branch, the last N and the best kept,
restore resumes training exactly, and gc frees what dropped steps needed."""

from __future__ import annotations

import json

import pytest
import torch

import git_theta
from git_theta.errors import UsageError
from tests.helpers import Repo


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> float:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 6, generator=gen)
    loss = ((model(x) - x.sum(1, keepdim=True) * 0.5) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _val_loss(step: int) -> float:
    return abs(step - 7) + 0.25  # lowest at step 7, which the last 3 do not hold


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}


def _needed(repo: Repo, revs: list[str]) -> set[str]:
    oids = set()
    for rev in revs:
        manifest = json.loads(repo.blob(f"{rev}:model.pt"))
        for record in manifest["tensors"].values():
            oids |= {o["oid"] for o in record["storage"]["objects"]}
    return oids


@pytest.mark.timeout(300)
def test_keep_last_and_best_restore_resumes_exactly_and_gc_frees_the_rest(repo: Repo) -> None:
    model, optimizer = _setup()
    losses = [_train_step(model, optimizer, step) for step in range(20)]  # uninterrupted

    model, optimizer = _setup()
    manager = git_theta.CheckpointManager(
        "model.pt", repo=repo.path, keep_last=3, keep_best=1, metric="val_loss", mode="min"
    )
    for step in range(20):
        assert _train_step(model, optimizer, step) == losses[step]
        manager.save(_state(model, optimizer, step), step, {"val_loss": _val_loss(step)})
    assert sorted(manager.steps()) == [7, 17, 18, 19]
    assert manager.latest() == 19
    assert manager.best() == 7
    assert manager.metrics(7) == {"val_loss": 0.25}
    branch = "checkpoints/model"
    assert repo.git("rev-list", "--count", f"main..{branch}").stdout.strip() == "4"
    assert repo.status() == ""

    state = manager.restore(manager.best())
    model, optimizer = _setup()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    assert _train_step(model, optimizer, 8) == losses[8]  # as if never interrupted

    repo.theta("gc", "--prune=now")
    kept = repo.git("rev-list", branch, "^main").stdout.split()
    assert repo.objects() == _needed(repo, kept)

    # a rollback: the old best step saved again as a new step; the best is still right
    manager.save(manager.restore(7), 20, {"val_loss": 9.0})
    assert sorted(manager.steps()) == [7, 18, 19, 20]
    assert manager.best() == 7
    assert json.dumps(manager.restore(20)["step"]) == "7"


def test_every_step_is_kept_by_default_and_errors_name_the_fix(repo: Repo) -> None:
    manager = git_theta.CheckpointManager("model.pt", repo=repo.path, branch="runs/a")
    for step in (0, 10, 20):
        manager.save({"w": torch.full((4,), float(step))}, step, {"acc": step / 100})
    assert manager.steps() == [0, 10, 20]
    assert torch.equal(manager.restore(10)["w"], torch.full((4,), 10.0))
    assert torch.equal(manager.restore()["w"], torch.full((4,), 20.0))
    every = git_theta.CheckpointManager(
        "model.pt", repo=repo.path, branch="runs/a", keep_every_steps=20
    )
    every.save({"w": torch.zeros(4)}, 30, {})
    assert every.steps() == [0, 20]
    with pytest.raises(UsageError) as info:
        manager.restore(5)
    assert str(info.value) == "step 5 is not kept on `runs/a`: it has [0, 20]"
    with pytest.raises(UsageError) as info:
        git_theta.CheckpointManager("model.pt", repo=repo.path, keep_best=1)
    assert str(info.value).startswith("keep_best needs metric=")
