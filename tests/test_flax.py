"""Flax msgpack checkpoints through git: byte-identical back, one array changed stores one
object, broken files refused in one line. The files are written as
``flax.serialization.to_bytes`` writes them (msgpack, arrays as extension type 1, NumPy
scalars as type 3, each ``[shape, dtype name, bytes]``), without JAX."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from git_theta import formats
from git_theta.errors import NotACheckpointError
from tests.helpers import Repo


def to_bytes(state: Any) -> bytes:
    """flax.serialization.to_bytes of a state dict of NumPy arrays and plain values."""

    def ext(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            kind = 1
        elif isinstance(value, np.generic):
            kind, value = 3, np.asarray(value)
        else:
            raise TypeError(type(value))
        payload = msgpack.packb((value.shape, value.dtype.name, value.tobytes("C")))
        return msgpack.ExtType(kind, payload)

    return msgpack.packb(state, default=ext, strict_types=True)


def make_state(scale: float = 1.0, step: int = 10) -> dict[str, Any]:
    rng = np.random.default_rng(4)
    return {
        "params": {
            "Dense_0": {
                "kernel": rng.standard_normal((16, 8)).astype(np.float32) * scale,
                "bias": np.zeros(8, np.float32),
            },
            "Embed_0": {"embedding": rng.standard_normal((10, 16)).astype(np.float16)},
            "LayerNorm/scale": np.ones(8, np.float64),
        },
        "opt_state": {"0": {"count": np.int32(step), "mu": {"w": np.arange(6, dtype=np.int64)}}},
        "step": step,
        "name": "run-1",
        "lr": 1e-3,
        "flags": [True, None, b"raw"],
    }


def make_flax(path: Path) -> None:
    path.write_bytes(to_bytes(make_state()))


def test_a_flax_checkpoint_comes_back_byte_identical_and_costs_what_changed(repo: Repo) -> None:
    repo.theta("track", "*.msgpack")
    path = repo.path / "state.msgpack"
    path.write_bytes(to_bytes(make_state()))
    v1 = hashlib.sha256(path.read_bytes()).hexdigest()
    repo.git("add", ".gitattributes", "state.msgpack")
    repo.git("commit", "-q", "-m", "v1")
    manifest = json.loads(repo.blob("HEAD:state.msgpack"))
    assert {name: (r["dtype"], r["shape"]) for name, r in manifest["tensors"].items()} == {
        "params/Dense_0/kernel": ("float32", [16, 8]),
        "params/Dense_0/bias": ("float32", [8]),
        "params/Embed_0/embedding": ("float16", [10, 16]),
        "params/LayerNorm~1scale": ("float64", [8]),
        "opt_state/0/count": ("int32", []),
        "opt_state/0/mu/w": ("int64", [6]),
    }
    path.unlink()
    repo.git("checkout", "--", "state.msgpack")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == v1
    assert repo.status() == ""

    before = repo.objects()
    path.write_bytes(to_bytes(make_state(scale=2.0)))
    v2 = path.read_bytes()
    repo.commit_file("state.msgpack", "v2")
    assert len(repo.objects() - before) == 1
    path.unlink()
    repo.git("checkout", "--", "state.msgpack")
    assert path.read_bytes() == v2


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x81\xa1k\xc7\x05\x01\x93\x91\x05", "the file is truncated"),
        (b"\xdf\xff\xff\xff\xff", "the file is truncated"),
        (b"\x81\xa1k" + b"\x91" * 200 + b"\xc0", "nests them too deeply"),
        (b"\x81\xa1k\xc1", "not msgpack"),
    ],
    ids=["cut-array", "huge-map", "deep", "bad-byte"],
)
def test_a_broken_flax_file_is_refused_in_one_line(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.msgpack"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError) as info:
        formats.get("flax").read(path, "bad.msgpack")
    assert info.value.reason.startswith("invalid flax msgpack file: ")
    assert reason in info.value.reason


def test_flax_is_detected_from_content(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    make_flax(path)
    assert formats.detect(path, "weights.bin").name == "flax"
    plain = tmp_path / "plain.msgpack"
    plain.write_bytes(msgpack.packb({"a": 1, "b": [1, 2]}))
    with pytest.raises(NotACheckpointError):
        formats.detect(plain, "plain.msgpack")
