"""Sharded Hugging Face checkpoints: `model-0000k-of-0000n.safetensors` shards and their
`model.safetensors.index.json`, tracked by one pattern, served by one filter process; a
tensor that moves to another shard costs no new object; a clone rebuilds every shard
byte-identical. A tiny `transformers` model saved with `save_pretrained` round-trips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import Repo
from tests.lfs_server import LfsServer
from tests.test_remote import clone


def _sha256s(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _write_shards(folder: Path, shards: list[dict[str, np.ndarray]]) -> None:
    """`save_pretrained`'s layout: n shards and an index naming each tensor's shard."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("model-*.safetensors"):
        old.unlink()
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for tensor_name, value in tensors.items():
            weight_map[tensor_name] = name
            total += value.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    return {
        f"layers.{i}.weight": rng.standard_normal((64, 64)).astype(np.float32) for i in range(8)
    }


@pytest.mark.timeout(300)
def test_a_tensor_moved_between_shards_costs_nothing_and_a_clone_rebuilds_every_shard(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, server = shared
    a.theta("track", "ckpt/*")
    folder = a.path / "ckpt"
    tensors = _tensors()
    names = list(tensors)
    shards = [{n: tensors[n] for n in names[i : i + 2]} for i in range(0, 8, 2)]
    _write_shards(folder, shards)
    trace = a.path / "trace.txt"
    env = {**os.environ, "GIT_TRACE": str(trace)}
    subprocess.run(["git", "add", ".gitattributes", "ckpt"], cwd=a.path, env=env, check=True)
    a.git("commit", "-q", "-m", "4 shards")
    lines = trace.read_text().splitlines()
    starts = [line for line in lines if "run_command: 'git-theta filter" in line]
    assert len(starts) == 1, starts  # one filter process served every shard
    listed = a.theta("ls-files").stdout
    assert "ckpt/model.safetensors.index.json  (text in no checkpoint format" in listed
    before = a.objects()
    assert len(before) == 8

    shards[1]["layers.0.weight"] = shards[0].pop("layers.0.weight")  # moved to shard 2
    _write_shards(folder, shards)
    a.git("add", "ckpt")
    a.git("commit", "-q", "-m", "move a tensor")
    assert a.objects() == before
    expected = _sha256s(folder)
    a.git("push", "-q", "-u", "origin", "main")

    b, _ = clone(bare, tmp_path / "b")
    assert _sha256s(b.path / "ckpt") == expected
    b.git("checkout", "-q", "HEAD~1")
    assert b.status() == ""
    assert len(list((b.path / "ckpt").glob("model-*.safetensors"))) == 4


@pytest.mark.timeout(300)
def test_save_pretrained_round_trips_and_gives_the_same_outputs(repo: Repo) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2, n_inner=64
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = repo.path / "tiny-gpt2"
    model.save_pretrained(folder, max_shard_size="40KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (folder / "model.safetensors.index.json").exists()
    written = _sha256s(folder)
    inputs = torch.arange(16).reshape(2, 8) % 128
    with torch.no_grad():
        expected = model(inputs).logits

    repo.theta("track", "tiny-gpt2/**")
    repo.git("add", ".gitattributes", "tiny-gpt2")
    repo.git("commit", "-q", "-m", "tiny gpt2")
    for path in folder.iterdir():
        path.unlink()
    repo.git("checkout", "--", "tiny-gpt2")
    assert _sha256s(folder) == written
    assert repo.status() == ""
    back = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(back(inputs).logits, expected)
