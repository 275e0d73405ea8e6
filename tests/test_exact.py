"""A torch.save file comes back byte for byte: commit, delete, check out, same sha256.

Each case is a file torch.save writes that a user keeps: a state dict, a whole training
checkpoint, a transposed tensor, slices of one storage, tied weights, every dtype; and what
users then do to it: load and save it again, change one tensor, merge two branches, apply
an update. Real git and git-lfs in temporary repositories.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from git_theta.tensors import DTYPES
from tests.helpers import Repo, assert_same_object


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Embedding(12, 6),
        torch.nn.Linear(6, 8),
        torch.nn.LayerNorm(8),
        torch.nn.Linear(8, 12),
    )


def _training(seed: int = 0, epoch: int = 3) -> dict[str, Any]:
    model = _model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(2):
        loss = model(torch.arange(4).reshape(2, 2)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "metrics": {"loss": 0.125, "accuracy": [0.5, 0.75], "best": True},
    }


def _every_dtype() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    values = {}
    for name in DTYPES:
        dtype = getattr(torch, name)
        if dtype.is_complex:
            values[name] = torch.randn(3, 4, dtype=dtype, generator=gen)
        else:
            values[name] = (torch.randn(3, 4, generator=gen) * 50).to(dtype)
    return values


def _tied() -> dict[str, Any]:
    model = _model(1)
    head = torch.nn.Linear(6, 12, bias=False)
    head.weight = model[0].weight  # tied: the very same parameter
    state = OrderedDict(model.state_dict())
    state["head.weight"] = head.weight
    state["decoder.weight"] = model[0].weight.detach()  # another view of the same storage
    return state


def _slices() -> dict[str, torch.Tensor]:
    buffer = torch.randn(200, generator=torch.Generator().manual_seed(2))
    return {"q": buffer[0:60].view(6, 10), "k": buffer[60:120].view(6, 10), "tail": buffer[190:]}


CASES = {
    "state-dict": lambda: _model(0).state_dict(),
    "training": _training,
    "transposed": lambda: {"w": torch.randn(5, 7).t(), "b": torch.randn(7)},
    "slices": _slices,
    "tied": _tied,
    "every-dtype": _every_dtype,
    "views": lambda: {
        "expanded": torch.randn(1, 4).expand(3, 4),
        "empty": torch.zeros(2, 0, 3),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.randn(3)),
    },
}


@pytest.mark.parametrize("case", CASES)
def test_checkout_gives_back_the_bytes_torch_save_wrote(repo: Repo, case: str) -> None:
    path = repo.path / "model.pt"
    torch.save(CASES[case](), path)
    written = _sha256(path)
    repo.commit_file("model.pt", case)
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    assert manifest["format"]["archive"]["name"] == "model"
    path.unlink()
    repo.git("checkout", "--", "model.pt")
    assert _sha256(path) == written
    assert repo.status() == ""


def test_load_and_save_again_leaves_status_clean(repo: Repo) -> None:
    path = repo.path / "model.pt"
    torch.save(_training(), path)
    repo.commit_file("model.pt", "v1")
    path.unlink()
    repo.git("checkout", "--", "model.pt")
    torch.save(torch.load(path, weights_only=True), path)
    assert repo.status() == ""
    repo.git("switch", "-q", "-c", "other")  # git would refuse with the file modified
    assert repo.git("diff", "--stat", "main").stdout == ""


def test_one_tensor_changed_stores_one_object_and_checks_out_exact(repo: Repo) -> None:
    path = repo.path / "model.pt"
    state = _model(0).state_dict()
    torch.save(state, path)
    repo.commit_file("model.pt", "v1")
    v1 = path.read_bytes()
    before = repo.objects()
    state["1.bias"] = state["1.bias"] + 1
    torch.save(state, path)
    v2 = path.read_bytes()
    repo.commit_file("model.pt", "v2")
    assert len(repo.objects() - before) == 1
    for rev, expected in (("HEAD~1", v1), ("HEAD", v2)):
        repo.git("checkout", "-q", rev, "--", "model.pt")
        assert path.read_bytes() == expected, rev


def test_a_merge_of_changes_to_different_tensors_is_what_torch_would_write(
    repo: Repo, tmp_path: Path
) -> None:
    path = repo.path / "model.pt"
    torch.save(_model(0).state_dict(), path)
    base = tmp_path / "base.pt"
    base.write_bytes(path.read_bytes())
    repo.commit_file("model.pt", "base")

    def edited(**changes: Any) -> Any:
        state = torch.load(base, weights_only=True)
        for name, change in changes.items():
            state[name.replace("_", ".")] = change(state[name.replace("_", ".")])
        return state

    repo.git("switch", "-q", "-c", "theirs")
    torch.save(edited(**{"1_bias": lambda t: t * 2}), path)
    repo.commit_file("model.pt", "theirs")
    repo.git("switch", "-q", "main")
    torch.save(edited(**{"3_weight": lambda t: t - 1}), path)
    repo.commit_file("model.pt", "ours")
    repo.git("merge", "-q", "--no-edit", "theirs")
    expected = tmp_path / "model.pt"
    torch.save(edited(**{"1_bias": lambda t: t * 2, "3_weight": lambda t: t - 1}), expected)
    assert path.read_bytes() == expected.read_bytes()
    assert repo.status() == ""


def test_a_merge_keeps_a_sides_layout_only_while_it_fits(repo: Repo) -> None:
    path = repo.path / "model.pt"
    torch.save(_training(epoch=1), path)
    repo.commit_file("model.pt", "base")
    repo.git("switch", "-q", "-c", "theirs")
    theirs = _training(epoch=1)
    theirs["note"] = "added on theirs"
    torch.save(theirs, path)
    repo.commit_file("model.pt", "theirs")
    repo.git("switch", "-q", "main")
    ours = _training(epoch=1)
    ours["model"]["1.bias"] = ours["model"]["1.bias"] + 1
    torch.save(ours, path)
    repo.commit_file("model.pt", "ours")
    theirs_layout = json.loads(repo.blob("theirs:model.pt"))["format"]["archive"]
    repo.git("merge", "-q", "--no-edit", "theirs")
    assert_same_object(dict(ours, note="added on theirs"), torch.load(path, weights_only=True))
    assert json.loads(repo.blob("HEAD:model.pt"))["format"]["archive"] == theirs_layout
    assert repo.status() == ""

    # both sides add a value: neither side's pickle holds the merged tree
    repo.git("switch", "-q", "-c", "second")
    torch.save(dict(ours, note="added on theirs", second=2), path)
    repo.commit_file("model.pt", "second")
    repo.git("switch", "-q", "main")
    torch.save(dict(ours, note="added on theirs", first=1), path)
    repo.commit_file("model.pt", "first")
    repo.git("merge", "-q", "--no-edit", "second")
    expected = dict(ours, note="added on theirs", first=1, second=2)
    assert_same_object(expected, torch.load(path, weights_only=True))
    assert "archive" not in json.loads(repo.blob("HEAD:model.pt"))["format"]
    assert repo.status() == ""


def _stage(repo: Repo, manifest: dict[str, Any]) -> None:
    blob = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    oid = repo.run("git", "hash-object", "-w", "--stdin", input=blob.encode()).stdout.strip()
    repo.git("update-index", "--cacheinfo", f"100644,{oid},model.pt")


def test_a_recorded_pickle_is_read_again_and_a_foreign_global_refused(repo: Repo) -> None:
    path = repo.path / "model.pt"
    torch.save({"a": torch.ones(2)}, path)
    repo.commit_file("model.pt", "v1")
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    hostile = pickle.dumps({"a": 1}, protocol=2).replace(b"}", b"cos\nsystem\n)R", 1)
    manifest["format"]["archive"]["pickle"] = base64.b64encode(zlib.compress(hostile)).decode()
    _stage(repo, manifest)
    path.unlink()
    proc = repo.git("checkout", "--", "model.pt", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "git-theta: error: model.pt: pytorch manifest's `archive` holds a pickle git-theta "
        "cannot read ("
    )
    assert "os.system" in lines[0]
    assert not path.exists()


def test_a_stale_layout_is_written_in_git_thetas_layout(repo: Repo) -> None:
    """A layout that no longer fits the tree (an edit made elsewhere) is not written: the
    file holds the tree the manifest names, never the recorded pickle."""
    path = repo.path / "model.pt"
    torch.save({"a": torch.ones(2), "epoch": 1}, path)
    repo.commit_file("model.pt", "v1")
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    manifest["format"]["root"]["dict"][1][1] = {"int": 2}
    _stage(repo, manifest)
    path.unlink()
    repo.git("checkout", "--", "model.pt")
    assert_same_object({"a": torch.ones(2), "epoch": 2}, torch.load(path, weights_only=True))
