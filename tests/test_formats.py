"""Checkpoint formats: one contract every format passes, then format-specific behaviour."""

from __future__ import annotations

import io
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from git_theta import formats
from git_theta.errors import (
    ManifestError,
    NotACheckpointError,
    UnsafeCheckpointError,
    UnsupportedError,
)
from git_theta.formats import Checkpoint, TensorData
from git_theta.tensors import DTYPES, numel, word_dtype
from git_theta.tensors import dtype as get_dtype
from tests.helpers import assert_same_object, seeded_state_dict

# ------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Modules built in tests (nn.Linear, ...) initialize from torch's global generator."""
    torch.manual_seed(0)


def read(path: Path, display_name: str = "weights.bin") -> Checkpoint:
    return formats.detect(path, display_name).read(path, display_name)


def _constant(words: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: words


def rebuild(checkpoint: Checkpoint, out: Path) -> Path:
    """Write ``checkpoint`` back the way smudge does: the format dict as the manifest's JSON
    gives it back, tensors as freshly decoded arrays (not views of the original file)."""
    fmt = json.loads(json.dumps(checkpoint.format, allow_nan=False, ensure_ascii=False))
    tensors = {
        name: TensorData(t.dtype, t.shape, _constant(t.load().copy()))
        for name, t in checkpoint.tensors.items()
    }
    with open(out, "wb") as f:
        formats.get(fmt["name"]).write(fmt, tensors, dict(checkpoint.aliases), f)
    return out


def snapshot(checkpoint: Checkpoint) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Tensors in order, each as (name, dtype, shape, canonical bytes)."""
    return [(n, t.dtype, t.shape, t.load().tobytes()) for n, t in checkpoint.tensors.items()]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A tensor whose bytes are random (so every bit pattern, NaNs included, can occur)."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (numel(shape) * itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def safetensors_bytes(header: str, data: bytes) -> bytes:
    raw = header.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


# --------------------------------------------------------------------- example files


def make_safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {
            "embed.weight": random_tensor(torch.bfloat16, (5, 4), 1),
            "layer.0.weight": random_tensor(torch.float32, (4, 4), 2),
            "layer.0.bias": random_tensor(torch.float16, (4,), 3),
            "layer.0.scale": random_tensor(torch.float8_e4m3fn, (3, 2), 4),
            "step": torch.tensor(7, dtype=torch.int64),
            "mask": random_tensor(torch.bool, (6,), 5),
            "empty": torch.zeros(0, 3, dtype=torch.int8),
        },
        str(path),
        metadata={"format": "pt", "author": "José"},
    )


def make_pytorch(path: Path) -> None:
    state = seeded_state_dict(n=3, size=4, seed=11)
    state["head.weight"] = state["layers.0.weight"].detach()  # tied: same storage, same view
    torch.save(
        {
            "model": state,
            "optimizer": {
                "state": {0: {"exp_avg": random_tensor(torch.bfloat16, (4, 4), 12)}},
                "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
            },
            "epoch": 3,
            "config": {"name": "tiny", "dtype": torch.float16, "eps": float("nan")},
            "scalar": torch.tensor(2.5, dtype=torch.float64),
        },
        path,
    )


def make_numpy(path: Path) -> None:
    rng = np.random.default_rng(13)
    with open(path, "wb") as f:  # np.savez of a path would add ".npz" to it
        np.savez_compressed(
            f,
            w=rng.standard_normal((6, 4)).astype(np.float32),
            ids=np.arange(5, dtype=">i8"),
            fortran=np.asfortranarray(rng.standard_normal((3, 2))),
            empty=np.zeros((0, 3), np.int8),
        )


def make_gguf(path: Path) -> None:
    from tests.test_gguf import make_gguf as write

    write(path)


def make_flax(path: Path) -> None:
    from tests.test_flax import make_flax as write

    write(path)


MAKERS: dict[str, Callable[[Path], None]] = {
    "safetensors": make_safetensors,
    "pytorch": make_pytorch,
    "numpy": make_numpy,
    "gguf": make_gguf,
    "flax": make_flax,
}
MISLEADING_NAMES = {
    "safetensors": "model.pt",
    "pytorch": "model.safetensors",
    "numpy": "m.pt",
    "gguf": "m.npy",
    "flax": "m.gguf",
}


# ------------------------------------------------------------------------- the contract


class TestFormatContract:
    """What every registered format must do. A new format adds a maker to MAKERS."""

    @pytest.fixture(params=formats.names())
    def name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def original(self, name: str, tmp_path: Path) -> Path:
        if name not in MAKERS:
            pytest.fail(f"format `{name}` has no example file maker in tests/test_formats.py")
        path = tmp_path / "weights.bin"
        MAKERS[name](path)
        return path

    def test_detect_uses_content_not_file_name(
        self, name: str, original: Path, tmp_path: Path
    ) -> None:
        assert formats.detect(original, "weights.bin").name == name
        misleading = tmp_path / MISLEADING_NAMES[name]
        shutil.copyfile(original, misleading)
        assert formats.detect(misleading, misleading.name).name == name

    def test_no_other_format_sniffs_the_file(self, name: str, original: Path) -> None:
        data = original.read_bytes()
        head, size = data[: formats.SNIFF_BYTES], len(data)
        assert [n for n in formats.names() if formats.get(n).sniff(head, size)] == [name]

    def test_read_gives_canonical_words_and_valid_aliases(self, name: str, original: Path) -> None:
        checkpoint = read(original)
        assert checkpoint.format["name"] == name
        assert checkpoint.tensors
        for tensor in checkpoint.tensors.values():
            assert tensor.dtype in DTYPES
            assert all(isinstance(d, int) and d >= 0 for d in tensor.shape)
            words = tensor.load()
            itemsize = get_dtype(tensor.dtype).itemsize
            assert words.dtype == word_dtype(itemsize)
            assert words.ndim == 1 and words.flags.c_contiguous
            assert words.nbytes == numel(tensor.shape) * itemsize
        assert not set(checkpoint.aliases) & set(checkpoint.tensors)
        assert set(checkpoint.aliases.values()) <= set(checkpoint.tensors)

    def test_format_dict_survives_the_manifest_json(self, original: Path) -> None:
        fmt = read(original).format
        text = json.dumps(fmt, allow_nan=False, ensure_ascii=False, sort_keys=True)
        assert json.loads(text) == fmt

    def test_write_rebuilds_the_same_tensors_and_format(
        self, original: Path, tmp_path: Path
    ) -> None:
        checkpoint = read(original)
        again = read(rebuild(checkpoint, tmp_path / "rebuilt.bin"))
        assert snapshot(again) == snapshot(checkpoint)
        assert again.format == checkpoint.format
        assert again.aliases == checkpoint.aliases

    def test_rebuild_is_deterministic(self, original: Path, tmp_path: Path) -> None:
        first = rebuild(read(original), tmp_path / "first.bin")
        second = rebuild(read(original), tmp_path / "second.bin")
        third = rebuild(read(first), tmp_path / "third.bin")  # a fixed point
        assert second.read_bytes() == first.read_bytes()
        assert third.read_bytes() == first.read_bytes()
        a, b = read(first), read(third)
        assert (a.format, a.aliases) == (b.format, b.aliases)

    def test_truncated_file_is_not_a_checkpoint(self, original: Path, tmp_path: Path) -> None:
        data = original.read_bytes()
        cut = tmp_path / "cut.bin"
        fmt = formats.detect(original, "weights.bin")
        for size in (len(data) - 1, len(data) // 2, 9):
            cut.write_bytes(data[:size])
            with pytest.raises(NotACheckpointError) as info:
                fmt.read(cut, "weights.bin")
            assert info.value.path == "weights.bin", size


def test_empty_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(NotACheckpointError) as info:
        formats.detect(path, "weights.bin")
    assert str(info.value) == "weights.bin: not a checkpoint git-theta can read: the file is empty"


@pytest.mark.parametrize(
    "content",
    [b"hello world\n", b"\x80\x02}q\x00.", b"{}"],
    ids=["text", "pickle", "json"],
)
def test_unknown_content_is_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError) as info:
        formats.detect(path, "model.safetensors")
    assert str(info.value) == (
        "model.safetensors: not a checkpoint git-theta can read: its content is not in any "
        "known format (safetensors, pytorch, numpy, gguf, flax)"
    )


def test_unknown_format_name() -> None:
    with pytest.raises(UnsupportedError) as info:
        formats.get("onnx")
    assert str(info.value) == (
        "checkpoint format `onnx` is not known to this git-theta: install the plugin that "
        "provides it, or upgrade git-theta"
    )


# --------------------------------------------------------------------------- safetensors


ODD_HEADER = (
    '{ "zeta" : {"dtype":"BF16", "shape":[2], "data_offsets":[8,12]},\n'
    '  "__metadata__": {"format": "pt", "note": "é ☃"},\n'
    '\t"alpha": {"shape": [2], "dtype": "F32", "data_offsets": [0, 8]},'
    '  "scalar": {"dtype": "U8", "shape": [], "data_offsets": [12, 13]},'
    '  "none": {"dtype": "I64", "shape": [0, 4], "data_offsets": [13, 13]} }' + " " * 7
)
ODD_DATA = struct.pack("<2f", 1.5, float("-inf")) + b"\x80\x7f\xc1\xff" + b"\x2a"


def test_safetensors_odd_header_is_kept_byte_for_byte(tmp_path: Path) -> None:
    original = tmp_path / "weights.bin"
    original.write_bytes(safetensors_bytes(ODD_HEADER, ODD_DATA))
    checkpoint = read(original)
    assert checkpoint.format == {"name": "safetensors", "header": ODD_HEADER}
    assert checkpoint.aliases == {}
    assert snapshot(checkpoint) == [  # in data order, not header order
        ("alpha", "float32", (2,), struct.pack("<2f", 1.5, float("-inf"))),
        ("zeta", "bfloat16", (2,), b"\x80\x7f\xc1\xff"),
        ("scalar", "uint8", (), b"\x2a"),
        ("none", "int64", (0, 4), b""),
    ]
    rebuilt = rebuild(checkpoint, tmp_path / "rebuilt.bin")
    assert rebuilt.read_bytes() == original.read_bytes()


def test_safetensors_library_file_is_rebuilt_byte_identical(tmp_path: Path) -> None:
    from safetensors import safe_open

    original = tmp_path / "weights.bin"
    make_safetensors(original)
    rebuilt = rebuild(read(original), tmp_path / "rebuilt.bin")
    assert rebuilt.read_bytes() == original.read_bytes()
    with safe_open(str(rebuilt), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "author": "José"}


@pytest.mark.parametrize("name", [n for n, d in DTYPES.items() if d.safetensors])
def test_safetensors_every_dtype(name: str, tmp_path: Path) -> None:
    itemsize = DTYPES[name].itemsize
    data = np.random.default_rng(5).bytes(6 * itemsize)
    header = json.dumps(
        {"t": {"dtype": DTYPES[name].safetensors, "shape": [2, 3], "data_offsets": [0, len(data)]}},
        separators=(",", ":"),
    )
    header += " " * (-len(header) % 8)
    original = tmp_path / "weights.bin"
    original.write_bytes(safetensors_bytes(header, data))
    checkpoint = read(original)
    assert snapshot(checkpoint) == [("t", name, (2, 3), data)]
    assert rebuild(checkpoint, tmp_path / "out.bin").read_bytes() == original.read_bytes()


def _cut_safetensors(tmp_path: Path, size: int) -> Path:
    data = safetensors_bytes(ODD_HEADER, ODD_DATA)
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:size])
    return path


@pytest.mark.parametrize("size", [1, 4, 7, 8, 9, 40, 8 + len(ODD_HEADER) - 1])
def test_safetensors_truncated_before_its_data(tmp_path: Path, size: int) -> None:
    """Cut in the length prefix or the header: no format claims the file, and reading it as
    safetensors anyway is a NotACheckpointError too (never struct.error or the like)."""
    path = _cut_safetensors(tmp_path, size)
    with pytest.raises(NotACheckpointError) as info:
        formats.detect(path, "weights.bin")
    assert (
        info.value.reason
        == "its content is not in any known format (safetensors, pytorch, numpy, gguf, flax)"
    )
    with pytest.raises(NotACheckpointError) as info:
        formats.get("safetensors").read(path, "weights.bin")
    assert info.value.path == "weights.bin"


@pytest.mark.parametrize("missing", [1, 5, 13])
def test_safetensors_truncated_in_its_data(tmp_path: Path, missing: int) -> None:
    full = safetensors_bytes(ODD_HEADER, ODD_DATA)
    path = _cut_safetensors(tmp_path, len(full) - missing)
    for read_it in (read, lambda p: formats.get("safetensors").read(p, "weights.bin")):
        with pytest.raises(NotACheckpointError) as info:
            read_it(path)
        assert (
            str(info.value)
            == "weights.bin: not a checkpoint git-theta can read: the file is truncated"
        )


def test_safetensors_bytes_after_the_last_tensor(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(safetensors_bytes(ODD_HEADER, ODD_DATA + b"\0"))
    with pytest.raises(NotACheckpointError) as info:
        read(path)
    assert info.value.reason == "the file has bytes after its last tensor"


@pytest.mark.parametrize("length", [2**40, 2**64 - 1])
def test_safetensors_absurd_header_length(tmp_path: Path, length: int) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(struct.pack("<Q", length) + b'{"a": 1}')
    with pytest.raises(NotACheckpointError) as info:
        formats.get("safetensors").read(path, "weights.bin")
    assert info.value.path == "weights.bin"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (
            '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}',
            "tensor `b` data overlaps another or leaves a gap",
        ),
        (
            '{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            "tensor `a` data overlaps another or leaves a gap",
        ),
        (
            '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}',
            "invalid safetensors header: tensor `a` has data_offsets that do not fit its shape",
        ),
        (
            '{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}',
            "invalid safetensors header: safetensors dtype `F4` is not supported by git-theta",
        ),
        ('{"__metadata__": [1]}', "invalid safetensors header: `__metadata__` is not an object"),
    ],
)
def test_safetensors_inconsistent_header(tmp_path: Path, header: str, reason: str) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(safetensors_bytes(header, b"\0" * 8))
    with pytest.raises(NotACheckpointError) as info:
        formats.get("safetensors").read(path, "weights.bin")
    assert info.value.reason == reason


def test_safetensors_write_refuses_a_manifest_that_disagrees(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(safetensors_bytes(ODD_HEADER, ODD_DATA))
    checkpoint = read(path)
    fmt = formats.get("safetensors")
    fewer = dict(list(checkpoint.tensors.items())[1:])
    with pytest.raises(
        ManifestError,
        match=r"^safetensors manifest's header and tensors disagree: the manifest is damaged",
    ):
        fmt.write(checkpoint.format, fewer, {}, io.BytesIO())
    with pytest.raises(
        ManifestError, match=r"^safetensors manifest has no `header`: the manifest is damaged"
    ):
        fmt.write({"name": "safetensors"}, checkpoint.tensors, {}, io.BytesIO())


# ------------------------------------------------------------------------------ pytorch


def torch_round_trip(obj: Any, tmp_path: Path) -> tuple[Checkpoint, Any]:
    """torch.save ``obj``, take it apart, rebuild it: byte for byte the original. Without
    its recorded layout it is rebuilt in git-theta's own layout, which must load with
    weights_only=True to what torch.load gives for the original. Returns the checkpoint
    and the object that layout loads to."""
    original = tmp_path / "weights.bin"
    torch.save(obj, original)
    checkpoint = read(original)
    assert "archive" in checkpoint.format
    assert rebuild(checkpoint, tmp_path / "rebuilt.bin").read_bytes() == original.read_bytes()
    own_format = {k: v for k, v in checkpoint.format.items() if k != "archive"}
    own = Checkpoint(own_format, checkpoint.tensors, checkpoint.aliases)
    back = torch.load(rebuild(own, tmp_path / "own.bin"), weights_only=True)
    assert_same_object(torch.load(original, weights_only=True), back)
    return checkpoint, back


TORCH_DTYPES = [getattr(torch, name) for name in DTYPES]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_pytorch_every_dtype(dtype: torch.dtype, tmp_path: Path) -> None:
    tensor = random_tensor(dtype, (3, 5), seed=21)
    checkpoint, _ = torch_round_trip({"w": tensor}, tmp_path)
    name = str(dtype).removeprefix("torch.")
    words = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert snapshot(checkpoint) == [("w", name, (3, 5), words)]


@pytest.mark.parametrize(
    ("tensor", "shape"),
    [
        (torch.tensor(3.25), ()),
        (torch.zeros(0), (0,)),
        (torch.zeros(2, 0, 3, dtype=torch.int16), (2, 0, 3)),
    ],
    ids=["0-d", "empty", "empty-3d"],
)
def test_pytorch_scalar_and_empty(
    tensor: torch.Tensor, shape: tuple[int, ...], tmp_path: Path
) -> None:
    checkpoint, back = torch_round_trip({"t": tensor}, tmp_path)
    assert [(n, t.shape) for n, t in checkpoint.tensors.items()] == [("t", shape)]
    assert back["t"].shape == shape


def test_pytorch_non_contiguous_views(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {
        "transposed": base.t(),
        "columns": base[:, 1:4],
        "strided": base[::2, ::3],
        "offset": base[2:],
        "expanded": torch.arange(3.0).expand(4, 3),
    }
    checkpoint, back = torch_round_trip(views, tmp_path)
    # each storage is stored whole, flat, and every view comes back as it was: its strides
    # and offset, sharing one storage
    for name, view in views.items():
        assert torch.equal(back[name], view), name
        assert back[name].stride() == view.stride(), name
        assert back[name].storage_offset() == view.storage_offset(), name
    pointers = {back[n].untyped_storage().data_ptr() for n in views if n != "expanded"}
    assert len(pointers) == 1
    assert back["expanded"].untyped_storage().nbytes() == 12
    assert [(n, t.shape) for n, t in checkpoint.tensors.items()] == [
        ("transposed", (24,)),
        ("expanded", (3,)),
    ]
    assert checkpoint.aliases == {}


def test_pytorch_parameters_and_requires_grad(tmp_path: Path) -> None:
    obj = {
        "trainable": torch.nn.Parameter(torch.ones(2)),
        "frozen": torch.nn.Parameter(torch.zeros(2), requires_grad=False),
        "grad_tensor": torch.ones(3, requires_grad=True),
        "plain": torch.ones(3),
    }
    checkpoint, back = torch_round_trip(obj, tmp_path)
    assert checkpoint.format["root"] == {
        "dict": [
            ["trainable", {"parameter": "trainable", "requires_grad": True}],
            ["frozen", {"parameter": "frozen", "requires_grad": False}],
            ["grad_tensor", {"tensor": "grad_tensor", "requires_grad": True}],
            ["plain", {"tensor": "plain"}],
        ]
    }
    assert type(back["trainable"]) is torch.nn.Parameter and back["trainable"].requires_grad
    assert type(back["frozen"]) is torch.nn.Parameter and not back["frozen"].requires_grad
    assert type(back["grad_tensor"]) is torch.Tensor and back["grad_tensor"].requires_grad


def test_pytorch_nested_containers(tmp_path: Path) -> None:
    obj = {
        "list": [torch.ones(1), [torch.zeros(2)], []],
        "tuple": (torch.ones(3), {"inner": torch.zeros(1)}, ()),
        "odict": OrderedDict([("z", torch.ones(1)), ("a", 1), ("m", {})]),
    }
    checkpoint, back = torch_round_trip(obj, tmp_path)
    assert list(checkpoint.tensors) == ["list/0", "list/1/0", "tuple/0", "tuple/1/inner", "odict/z"]
    assert type(back["odict"]) is OrderedDict and list(back["odict"]) == ["z", "a", "m"]
    assert type(back["tuple"]) is tuple and type(back["list"][1]) is list


def test_pytorch_shared_containers_are_built_once_and_come_back_equal(tmp_path: Path) -> None:
    shared = {"lr": 0.1, "w": torch.ones(2), "steps": [1, 2]}
    obj = {"a": shared, "b": [shared, shared], "c": (shared["steps"],)}
    checkpoint, back = torch_round_trip(obj, tmp_path)
    assert list(checkpoint.tensors) == ["a/w"]  # the tensor is named where first met
    assert back["b"][1] == back["a"] == {"lr": 0.1, "w": back["a"]["w"], "steps": [1, 2]}
    assert back["c"] == ([1, 2],)


def test_pytorch_top_level_tensor_and_list(tmp_path: Path) -> None:
    checkpoint, back = torch_round_trip(torch.arange(4), tmp_path)
    assert list(checkpoint.tensors) == ["tensor"]
    checkpoint, back = torch_round_trip([torch.ones(1), torch.ones(2)], tmp_path)
    assert list(checkpoint.tensors) == ["0", "1"]


def test_pytorch_plain_values(tmp_path: Path) -> None:
    obj = {
        "set": {3, 1, "two"},
        "frozen_bytes": b"\x00\xff raw \x80",
        "size": torch.Size([2, 3]),
        "dtypes": [torch.bfloat16, torch.float8_e5m2, torch.complex64],
        "devices": [torch.device("cpu"), torch.device("cuda", 1), torch.device("cuda:0")],
        "big": [2**63, -(2**63) - 1, 2**200, -1, 255, 256, 65536, 2**31, -(2**31)],
        "floats": [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 0.1],
        "misc": [None, True, False, "", "héllo ☃"],
    }
    checkpoint, back = torch_round_trip(obj, tmp_path)
    assert checkpoint.tensors == {}
    assert back["set"] == {3, 1, "two"}
    assert type(back["size"]) is torch.Size
    assert back["devices"] == [
        torch.device("cpu"),
        torch.device("cuda", 1),
        torch.device("cuda", 0),
    ]
    floats = back["floats"]
    assert floats[0] != floats[0] and floats[1:] == [float("inf"), float("-inf"), -0.0, 5e-324, 0.1]
    assert str(floats[3]) == "-0.0"


def test_pytorch_names_escape_slash_and_tilde(tmp_path: Path) -> None:
    obj = {"a/b": torch.ones(1), "c~d": torch.ones(2), "e~1f": {"g/h": torch.ones(3)}}
    checkpoint, back = torch_round_trip(obj, tmp_path)
    assert list(checkpoint.tensors) == ["a~1b", "c~0d", "e~01f/g~1h"]
    assert list(back) == ["a/b", "c~d", "e~1f"]


def test_pytorch_optimizer_state_with_int_keys(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    checkpoint, back = torch_round_trip(optimizer.state_dict(), tmp_path)
    assert list(checkpoint.tensors) == [
        "state/0/step",
        "state/0/exp_avg",
        "state/0/exp_avg_sq",
        "state/1/step",
        "state/1/exp_avg",
        "state/1/exp_avg_sq",
    ]
    assert list(back["state"]) == [0, 1]
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.01)
    fresh.load_state_dict(back)


class TiedModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight


def test_pytorch_tied_weights_are_aliases_rebuilt_shared(tmp_path: Path) -> None:
    state = TiedModel().state_dict()
    checkpoint, back = torch_round_trip(state, tmp_path)
    assert list(checkpoint.tensors) == ["embed.weight", "norm.weight", "norm.bias"]
    assert checkpoint.aliases == {"head.weight": "embed.weight"}
    assert list(back) == ["embed.weight", "norm.weight", "norm.bias", "head.weight"]
    assert back["head.weight"].data_ptr() == back["embed.weight"].data_ptr()
    back["embed.weight"][0, 0] = 42.0
    assert back["head.weight"][0, 0].item() == 42.0


def test_pytorch_same_tensor_object_twice_stays_one_object(tmp_path: Path) -> None:
    w = torch.ones(2, 2)
    checkpoint, back = torch_round_trip({"a": w, "b": [w]}, tmp_path)
    assert list(checkpoint.tensors) == ["a"] and checkpoint.aliases == {}
    assert back["b"][0] is back["a"]


def test_pytorch_state_dict_metadata_is_kept(tmp_path: Path) -> None:
    """model.state_dict() carries `_metadata` (per-module versions that load_state_dict
    passes to _load_from_state_dict); a rebuilt checkpoint must keep it."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    _, back = torch_round_trip(model.state_dict(), tmp_path)
    original = torch.load(tmp_path / "weights.bin", weights_only=True)
    assert original._metadata == OrderedDict(
        [("", {"version": 1}), ("0", {"version": 1}), ("1", {"version": 2})]
    )
    assert getattr(back, "_metadata", None) == original._metadata


def test_pytorch_conjugate_view_is_not_silently_changed(tmp_path: Path) -> None:
    """A lazily conjugated tensor is saved as its storage plus a `conj` flag; git-theta must
    either rebuild the same values or refuse it, never return the unconjugated values."""
    x = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj()
    original = tmp_path / "weights.bin"
    torch.save({"c": x}, original)
    try:
        checkpoint = read(original)
    except UnsupportedError:
        return
    back = torch.load(rebuild(checkpoint, tmp_path / "rebuilt.bin"), weights_only=True)
    assert torch.equal(back["c"].resolve_conj(), x.resolve_conj())


def test_pytorch_rebuilt_storages_are_64_byte_aligned(tmp_path: Path) -> None:
    original = tmp_path / "weights.bin"
    make_pytorch(original)
    rebuilt = rebuild(read(original), tmp_path / "rebuilt.bin")
    with open(rebuilt, "rb") as f, zipfile.ZipFile(f) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename]
        assert len(members) == 5
        for info in members:
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    assert_same_object(
        torch.load(rebuilt, weights_only=True, mmap=True), torch.load(original, weights_only=True)
    )


def test_pytorch_legacy_non_zip_format_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(NotACheckpointError) as info:
        read(path)
    assert (
        info.value.reason
        == "its content is not in any known format (safetensors, pytorch, numpy, gguf, flax)"
    )


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)


def test_pytorch_whole_nn_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsupportedError) as info:
        read(path)
    assert str(info.value) == (
        "weights.bin: uses `torch.nn.modules.linear.Linear` (a tensor subclass, quantized, "
        "sparse or scripted object), which git-theta does not support"
    )


def test_pytorch_user_defined_module_class_is_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    torch.save(Tiny(), path)
    with pytest.raises(UnsafeCheckpointError) as info:
        read(path)
    assert str(info.value) == (
        "weights.bin: refused to load: its pickle asks for `tests.test_formats.Tiny`, which "
        "could run code; git-theta loads only tensors and plain values"
    )


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_pytorch_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.bin"
    torch.save({"w": torch.ones(1), "evil": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        read(path)
    assert info.value.name == "posix.mkdir"
    assert str(info.value) == (
        "weights.bin: refused to load: its pickle asks for `posix.mkdir`, which could run "
        "code; git-theta loads only tensors and plain values"
    )
    assert not marker.exists()


def test_pytorch_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert formats.detect(path, "weights.bin").name == "pytorch"
    with pytest.raises(UnsupportedError) as info:
        read(path)
    assert str(info.value) == (
        "weights.bin: torch archive member `weights/code/__torch__/torch/nn/modules/linear.py` "
        "is not supported (TorchScript and other archives are not plain torch.save files)"
    )


NO_TORCH = """
import io, sys
from pathlib import Path
from git_theta import formats
path = Path(sys.argv[1])
checkpoint = formats.detect(path, "weights.bin").read(path, "weights.bin")
assert len(checkpoint.tensors) == 5, list(checkpoint.tensors)
for tensor in checkpoint.tensors.values():
    tensor.load()
out = io.BytesIO()
formats.get("pytorch").write(checkpoint.format, checkpoint.tensors, checkpoint.aliases, out)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert loaded == [], loaded
print("ok")
"""


def test_pytorch_read_and_write_never_import_torch(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    make_pytorch(path)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(path)], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")


# ------------------------------------------------------------- mapped reads of private files


def test_a_private_files_large_tensors_are_mapped_copy_on_write(tmp_path: Path) -> None:
    from git_theta.formats import base

    path = tmp_path / "spooled"
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    offset, size = 4097, 2 << 20  # not on a page boundary
    shared = base.SharedFile(path)
    copied = base.read_range(shared, offset, size)
    assert copied.base is None  # read into an array of its own
    with base.private_file(path):
        private = base.SharedFile(path)
    assert private.private and not shared.private
    mapped = base.read_range(private, offset, size)
    assert isinstance(mapped.base, memoryview) and isinstance(mapped.base.obj, mmap.mmap)
    assert mapped.tobytes() == copied.tobytes() == data[offset : offset + size].tobytes()
    small = base.read_range(private, offset, base.MAP_MIN_BYTES - 1)  # cheaper to read
    assert small.tobytes() == data[offset : offset + base.MAP_MIN_BYTES - 1].tobytes()
    assert small.base is None
    mapped[:] = 0  # writable, as a read array is, and the file keeps its bytes
    assert path.read_bytes() == data.tobytes()

    def refused(*args: Any, **kwargs: Any) -> mmap.mmap:
        raise OSError(19, "No such device")  # as some file systems answer

    with pytest.MonkeyPatch.context() as mp:  # a file that cannot be mapped is read
        mp.setattr(mmap, "mmap", refused)
        unmapped = base.read_range(private, offset, size)
        assert unmapped.base is None and unmapped.tobytes() == copied.tobytes()
    for reader in (shared, private):  # a range past the end: the same error either way
        with pytest.raises(EOFError) as info:
            base.read_range(reader, (3 << 20) - 100, size)
        assert str(info.value) == f"file ends {size - 100} bytes early"
        with pytest.raises(EOFError) as info:
            base.read_range(reader, 5 << 20, size)
        assert str(info.value) == f"file ends {size} bytes early"


def test_the_clean_filter_maps_the_tensors_of_its_own_copy_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta.driver import FilterDriver
    from git_theta.formats import base
    from git_theta.manifest import parse_if_manifest
    from git_theta.repo import Repo

    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    spooled = tmp_path / "theta-in-copy"  # what the filter spooled git's content to
    big = torch.arange(1 << 19, dtype=torch.float32)  # 2 MiB: mapped
    small = torch.arange(16, dtype=torch.float32)
    torch.save({"big": big, "small": small}, spooled)
    mapped: list[int] = []
    real = base._mapped_range

    def spy(file: base.SharedFile, offset: int, size: int) -> np.ndarray:
        mapped.append(size)
        return real(file, offset, size)

    monkeypatch.setattr(base, "_mapped_range", spy)
    out = io.BytesIO()
    FilterDriver(Repo.open(tmp_path / "repo")).clean("model.pt", spooled, out)
    assert mapped == [big.numel() * 4]
    assert not base._PRIVATE  # only while the file is cleaned
    manifest = parse_if_manifest(out.getvalue())
    assert manifest is not None and sorted(manifest.tensors) == ["big", "small"]
    checkpoint = formats.get("pytorch").read(spooled, "model.pt")  # another reader: a copy
    assert checkpoint.tensors["big"].load().tobytes() == big.numpy().tobytes()
    assert mapped == [big.numel() * 4]
