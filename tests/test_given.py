"""`git theta add --update-type T --update-data F`: low-rank, ia3 and sparse updates the user
passes, stored as the update plus an exact correction; rebuilt bit-exact everywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from git_theta.manifest import Manifest

from .helpers import Repo

FLOAT = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.q.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "layers.0.v.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(64).astype(np.float32),
        "half.weight": rng.standard_normal((32, 40)).astype(ml_dtypes.bfloat16),
        "double.weight": rng.standard_normal((32, 24)),
    }


@pytest.fixture
def tracked(tmp_path: Path) -> Repo:
    repo = Repo.init(tmp_path / "repo")
    repo.theta("install", "--local")
    repo.theta("track", "model.safetensors")
    save_file(_weights(), str(repo.path / "model.safetensors"))
    repo.git("add", "-A")
    repo.git("commit", "-qm", "v1")
    return repo


def _add_update(
    repo: Repo, kind: str, arrays: dict[str, np.ndarray], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Save ``arrays`` beside the repository and `git theta add` them as a ``kind`` update."""
    data = repo.path.parent / f"{kind}.safetensors"
    save_file(arrays, str(data))
    return repo.theta(
        "add", "model.safetensors", "--update-type", kind, "--update-data", str(data), check=check
    )


def _bits(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values).tobytes()


def _commit_and_check(repo: Repo, expected: dict[str, np.ndarray]) -> Manifest:
    """Commit the staged update; the work tree is clean, and a fresh checkout holds
    ``expected`` bit for bit."""
    repo.git("commit", "-qm", "update")
    assert repo.git("diff-index", "--quiet", "HEAD", check=False).returncode == 0
    assert repo.status() == ""
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors")
    loaded = load_file(str(repo.path / "model.safetensors"))
    assert {k: _bits(v) for k, v in loaded.items()} == {k: _bits(v) for k, v in expected.items()}
    assert repo.status() == ""
    assert repo.theta("fsck", "--all").returncode == 0
    return Manifest.from_bytes(repo.blob("HEAD:model.safetensors"))


def test_low_rank_from_factor_files_is_the_numpy_reconstruction(tracked: Repo) -> None:
    rng = np.random.default_rng(1)
    old = _weights()
    update = {
        "layers.0.q.weight/R": rng.standard_normal((64, 8)).astype(np.float32) * 0.01,
        "layers.0.q.weight/C": rng.standard_normal((8, 48)).astype(np.float32),
        "half.weight/R": rng.standard_normal((32, 4)).astype(np.float32) * 0.1,
        "half.weight/C": rng.standard_normal((4, 40)).astype(np.float32),
    }
    save_file(update, str(tracked.path / "lora.safetensors"))
    proc = tracked.theta(
        "add", "model.safetensors", "--update-type", "low-rank", "--update-data", "lora.safetensors"
    )
    assert proc.stderr.startswith("git-theta: model.safetensors: 2 tensors updated (low-rank")
    expected = dict(old)
    q = update["layers.0.q.weight/R"] @ update["layers.0.q.weight/C"]
    expected["layers.0.q.weight"] = old["layers.0.q.weight"] + q
    half = old["half.weight"].astype(np.float32) + update["half.weight/R"] @ update["half.weight/C"]
    expected["half.weight"] = half.astype(ml_dtypes.bfloat16)
    (tracked.path / "lora.safetensors").unlink()
    manifest = _commit_and_check(tracked, expected)
    q_record = manifest.tensors["layers.0.q.weight"]
    assert q_record.encoding == "low-rank"
    factors = 64 * 8 * 4 + 8 * 48 * 4
    own = sum(o.size for o in q_record.storage.own)  # type: ignore[attr-defined]
    assert own < 1.5 * factors + 2000  # the factors, a small correction, the zip records
    assert manifest.tensors["layers.0.v.weight"].encoding == "dense"  # untouched


def test_ia3_from_a_torch_file_and_sparse_from_csr(tracked: Repo) -> None:
    import torch

    old = _weights()
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.5, 1.5, (1, 48)).astype(np.float32)
    ia3 = tracked.path.parent / "ia3.pt"
    torch.save({"layers.0.v.weight": {"ia3": torch.from_numpy(scale)}}, ia3)
    tracked.theta("add", "model.safetensors", "--update-type=ia3", f"--update-data={ia3}")
    expected = dict(old)
    expected["layers.0.v.weight"] = old["layers.0.v.weight"] * scale
    manifest = _commit_and_check(tracked, expected)
    record = manifest.tensors["layers.0.v.weight"]
    assert record.encoding == "ia3" and record.storage.corrected == 0  # type: ignore[attr-defined]

    # a CSR matrix of the flattened difference (one row), as git-theta 0.2 users have it
    flat = np.zeros(64 * 48, np.float32)
    positions = np.sort(rng.choice(flat.size, 30, replace=False))
    data = rng.standard_normal(30).astype(np.float32)
    csr = {
        "layers.0.q.weight/data": data,
        "layers.0.q.weight/indices": positions.astype(np.int64),
        "layers.0.q.weight/indptr": np.array([0, 30], dtype=np.int64),
        "layers.0.q.weight/shape": np.array([1, flat.size], dtype=np.int64),
    }
    save_file(csr, str(tracked.path / "sparse.safetensors"))
    tracked.theta(
        "add",
        "model.safetensors",
        "--update-type",
        "sparse",
        "--update-data",
        "sparse.safetensors",
    )
    (tracked.path / "sparse.safetensors").unlink()
    q = expected["layers.0.q.weight"].reshape(-1).copy()
    q[positions] = q[positions] + data
    expected["layers.0.q.weight"] = q.reshape(64, 48)
    manifest = _commit_and_check(tracked, expected)
    assert manifest.tensors["layers.0.q.weight"].encoding == "sparse"


def test_a_peft_adapter_directory(tracked: Repo) -> None:
    rng = np.random.default_rng(3)
    adapter = tracked.path.parent / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA", "target_modules": ["q", "v"]})
    )
    a = {m: rng.standard_normal((4, 48)).astype(np.float32) for m in ("q", "v")}
    b = {m: rng.standard_normal((64, 4)).astype(np.float32) * 0.01 for m in ("q", "v")}
    save_file(
        {
            f"base_model.model.layers.0.{m}.lora_{ab}.weight": (a if ab == "A" else b)[m]
            for m in ("q", "v")
            for ab in "AB"
        },
        str(adapter / "adapter_model.safetensors"),
    )
    tracked.theta(
        "add", "model.safetensors", "--update-type", "low-rank", "--update-data", str(adapter)
    )
    old = _weights()
    expected = dict(old)
    for m in ("q", "v"):
        name = f"layers.0.{m}.weight"
        expected[name] = old[name] + (b[m] @ a[m]) * np.float32(2.0)
    manifest = _commit_and_check(tracked, expected)
    assert {manifest.tensors[f"layers.0.{m}.weight"].encoding for m in ("q", "v")} == {"low-rank"}


def test_a_record_without_its_correction_fails_where_the_rebuild_differs(tracked: Repo) -> None:
    # factors whose products and sums are exact in float32: the rebuild alone is the tensor
    exact = {
        "layers.0.v.weight/R": np.eye(64, 2, dtype=np.float32) * 0.5,
        "layers.0.v.weight/C": np.full((2, 48), 0.25, dtype=np.float32),
    }
    old = _weights()
    _add_update(tracked, "low-rank", exact)
    expected = dict(old)
    expected["layers.0.v.weight"] = (
        old["layers.0.v.weight"] + exact["layers.0.v.weight/R"] @ exact["layers.0.v.weight/C"]
    )
    manifest = _commit_and_check(tracked, expected)
    record = manifest.tensors["layers.0.v.weight"]
    assert record.encoding == "low-rank" and record.storage.corrected == 0  # type: ignore[attr-defined]
    assert len(record.storage.own) == 2  # type: ignore[attr-defined]

    # float64: BLAS fuses each multiply-add, the float64 rebuild cannot: they differ
    rng = np.random.default_rng(4)
    update = {
        "double.weight/R": rng.standard_normal((32, 16)),
        "double.weight/C": rng.standard_normal((16, 24)),
    }
    _add_update(tracked, "low-rank", update)
    tracked.git("commit", "-qm", "low-rank")
    value = json.loads(tracked.blob("HEAD:model.safetensors"))
    storage = value["tensors"]["double.weight"]["storage"]
    step = storage["chain"][0]
    assert step["corrected"] > 0
    # the correction dropped: the rebuild alone is not the tensor, and checkout says so
    del storage["objects"][2:4]
    step["corrected"], step["objects"] = 0, 2
    forged = json.dumps(value).encode()
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=tracked.path,
            input=forged,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    tracked.git("update-index", "--cacheinfo", f"100644,{blob},model.safetensors")
    (tracked.path / "model.safetensors").unlink()
    proc = tracked.git("checkout", "--", "model.safetensors", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("git-theta: error:")]
    assert len(lines) == 1 and "tensor `double.weight`" in lines[0]
    assert "does not match its recorded hash" in lines[0]
    assert not (tracked.path / "model.safetensors").exists()  # never a wrong tensor


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            {
                "layers.0.q.weight/R": np.ones((64, 4), np.float32),
                "layers.0.q.weight/C": np.ones((3, 48), np.float32),
            },
            "update of `layers.0.q.weight` [64, 48]: R [64, 4] @ C [3, 48] does not give [64, 48]",
        ),
        (
            {"nothere/R": np.ones((2, 1), np.float32), "nothere/C": np.ones((1, 2), np.float32)},
            "update for `nothere` fits no single tensor of the checkpoint (found none)",
        ),
        (
            {
                "layers.0.bias/R": np.ones((64, 1), np.float32),
                "layers.0.bias/C": np.ones((1, 1), np.float32),
            },
            "`layers.0.bias` has 1 dimensions: low-rank needs 2 or more",
        ),
        ({"layers.0.q.weight/R": np.ones((64, 4), np.float32)}, "has no `layers.0.q.weight/C`"),
        (
            {
                "layers.0.q.weight/R": np.ones((64, 0), np.float32),
                "layers.0.q.weight/C": np.ones((0, 48), np.float32),
            },
            "update of `layers.0.q.weight`: rank 0 (1 to 2**20 supported)",
        ),
    ],
)
def test_an_update_that_does_not_fit_is_one_line_and_stages_nothing(
    tracked: Repo, update: dict[str, np.ndarray], message: str
) -> None:
    index = tracked.git("ls-files", "-s").stdout
    before = (tracked.path / "model.safetensors").read_bytes()
    proc = _add_update(tracked, "low-rank", update, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert tracked.git("ls-files", "-s").stdout == index
    assert (tracked.path / "model.safetensors").read_bytes() == before


def test_update_type_without_data_sets_the_policy_for_one_add(tracked: Repo) -> None:
    weights = _weights()
    weights["layers.0.q.weight"][0, :5] += 1
    save_file(weights, str(tracked.path / "model.safetensors"))
    tracked.theta("add", "--update-type", "dense", "model.safetensors")
    manifest = Manifest.from_bytes(tracked.blob(":model.safetensors"))
    assert manifest.tensors["layers.0.q.weight"].encoding == "dense"
    tracked.theta("add", "--update-type=xor", "model.safetensors")  # unchanged: kept
    assert Manifest.from_bytes(tracked.blob(":model.safetensors")) == manifest
    weights["layers.0.q.weight"][1, :5] += 1
    save_file(weights, str(tracked.path / "model.safetensors"))
    tracked.theta("add", "--update-type=xor", "model.safetensors")
    manifest = Manifest.from_bytes(tracked.blob(":model.safetensors"))
    assert manifest.tensors["layers.0.q.weight"].encoding == "xor"
    proc = tracked.theta("add", "--update-type", "ia3", "model.safetensors", check=False)
    assert proc.returncode == 2 and "low-rank and ia3 need --update-data" in proc.stderr


def test_a_sparse_difference_of_zeros_changes_nothing_and_a_bad_adapter_is_one_line(
    tracked: Repo,
) -> None:
    index = tracked.git("ls-files", "-s").stdout
    zeros = {
        "layers.0.q.weight/data": np.zeros(2, np.float32),
        "layers.0.q.weight/indices": np.array([1, 5], dtype=np.int64),
        "layers.0.q.weight/indptr": np.array([0, 2], dtype=np.int64),
    }
    _add_update(tracked, "sparse", zeros)
    assert tracked.git("ls-files", "-s").stdout == index  # the same manifest, staged again
    assert tracked.status() == ""

    adapter = tracked.path.parent / "adapter"
    adapter.mkdir()
    save_file(
        {
            "base_model.model.layers.0.q.lora_A.weight": np.ones((4, 48), np.float32),
            "base_model.model.layers.0.q.lora_B.weight": np.ones((64, 4), np.float32),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    for alpha in ("Infinity", "NaN", "1" + "0" * 400):
        (adapter / "adapter_config.json").write_text(f'{{"r": 4, "lora_alpha": {alpha}}}')
        proc = tracked.theta(
            "add",
            "model.safetensors",
            "--update-type",
            "low-rank",
            "--update-data",
            str(adapter),
            check=False,
        )
        assert proc.returncode == 2
        assert proc.stderr == (
            f"git-theta: error: {adapter / 'adapter_config.json'}: `lora_alpha` / `r` is not "
            "a finite number\n"
        )
    assert tracked.git("ls-files", "-s").stdout == index
