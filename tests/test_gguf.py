"""GGUF files through git: byte-identical back with F32, F16, BF16 and quantized tensors and
metadata; one tensor changed stores one object; broken headers refused in one line."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from git_theta import formats
from git_theta.errors import NotACheckpointError
from tests.helpers import Repo


def make_gguf(path: Path, scale: float = 1.0, name: str = "tiny") -> None:
    """A small llama-shaped GGUF written with the gguf package's own writer."""
    rng = np.random.default_rng(3)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_string("general.name", name)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "world"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.5, -3.0])
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((4, 64)).astype(np.float32) * scale)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((32, 64)).astype(np.float16))
    quantized = gguf.quants.quantize(
        rng.standard_normal((8, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor(
        "blk.0.attn_q.weight",
        quantized,
        raw_shape=quantized.shape,
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor("blk.0.idx", np.arange(7, dtype=np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_gguf_comes_back_byte_identical_and_costs_what_changed(repo: Repo) -> None:
    repo.theta("track", "*.gguf")
    path = repo.path / "model.gguf"
    make_gguf(path)
    v1 = _sha256(path)
    repo.git("add", ".gitattributes", "model.gguf")
    repo.git("commit", "-q", "-m", "v1")
    manifest = json.loads(repo.blob("HEAD:model.gguf"))
    assert manifest["format"]["tensors"] == [
        ["token_embd.weight", "F32"],
        ["blk.0.attn_norm.weight", "F32"],
        ["blk.0.ffn_up.weight", "F16"],
        ["blk.0.attn_q.weight", "Q8_0"],
        ["blk.0.idx", "I32"],
    ]
    shapes = {name: (r["dtype"], r["shape"]) for name, r in manifest["tensors"].items()}
    assert shapes["token_embd.weight"] == ("float32", [4, 64])
    assert shapes["blk.0.attn_q.weight"] == ("uint8", [8 * 2 * 34])  # 2 Q8_0 blocks a row
    path.unlink()
    repo.git("checkout", "--", "model.gguf")
    assert _sha256(path) == v1
    assert repo.status() == ""

    before = repo.objects()
    make_gguf(path, scale=2.0)  # one tensor changed, metadata the same
    v2 = _sha256(path)
    repo.commit_file("model.gguf", "v2")
    assert len(repo.objects() - before) == 1
    make_gguf(path, scale=2.0, name="renamed")  # metadata changed: the header, once
    repo.commit_file("model.gguf", "v3")
    assert len(repo.objects() - before) == 2
    for rev, expected in (("HEAD~2", v1), ("HEAD~1", v2)):
        repo.git("checkout", "-q", rev, "--", "model.gguf")
        assert _sha256(path) == expected, rev


def _header(*, tensors: int = 0, kvs: int = 0, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs) + body


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_header(tensors=2**40), "claims more metadata and tensors than its size holds"),
        (
            _header(kvs=1, body=struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, 2**50)),
            "has an array longer than the file",
        ),
        (_header(kvs=1, body=struct.pack("<Q", 2**60)), "ends inside its header"),
        (_header(kvs=1, body=struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77)), "unknown type"),
    ],
    ids=["tensor-count", "array-count", "key-length", "value-type"],
)
def test_a_broken_gguf_header_is_refused_without_allocating(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content + bytes(64))
    with pytest.raises(NotACheckpointError) as info:
        formats.detect(path, "bad.gguf").read(path, "bad.gguf")
    assert info.value.reason.startswith("invalid GGUF file: the file ")
    assert reason in info.value.reason


def test_a_truncated_gguf_is_refused_at_add_in_one_line(repo: Repo) -> None:
    repo.theta("track", "*.gguf")
    path = repo.path / "model.gguf"
    make_gguf(path)
    path.write_bytes(path.read_bytes()[:-100])
    proc = repo.git("add", ".gitattributes", "model.gguf", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert lines == [
        "git-theta: error: model.gguf: not a checkpoint git-theta can read: invalid GGUF file: "
        "the file is truncated"
    ]
