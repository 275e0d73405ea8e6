"""Mutation tests: valid checkpoints, manifests and objects with bits flipped, bytes cut off
and length fields set to large values. Each must give one clear error or an exact round
trip; never a crash, a hang, or raw exception text.

The product runs in a worker process (tests/fuzz_worker.py) under an address-space limit,
and every answer has a deadline, so a regression fails a test instead of exhausting the
machine.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import resource
import selectors
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 4 << 30
ANSWER_SECONDS = 30
# CI runs a fixed set of examples; GIT_THETA_FUZZ_EXAMPLES=20000 GIT_THETA_FUZZ_RANDOM=1 explores
EXAMPLES = int(os.environ.get("GIT_THETA_FUZZ_EXAMPLES", "150"))
RANDOM = bool(os.environ.get("GIT_THETA_FUZZ_RANDOM"))


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


class Worker:
    """The product in a process of its own; ``ask`` sends one request and waits a bounded
    time for its answer."""

    def __init__(self, root: Path) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz_worker", str(root)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_limits,
            env=env,
        )
        self.selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def ask(self, kind: str, data: bytes, name: str = "model") -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"kind": kind, "name": name, "data": base64.b64encode(data).decode()}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        if not self.selector.select(timeout=ANSWER_SECONDS):
            self.proc.kill()
            pytest.fail(f"no answer within {ANSWER_SECONDS} s to this {kind}: {data!r:.3000}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            assert self.proc.stderr is not None
            pytest.fail(
                f"the worker died (exit {self.proc.returncode}) on this {kind}: {data!r:.3000}\n"
                f"{self.proc.stderr.read().decode()[-3000:]}"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.selector.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.close()


def _pytorch_seed() -> bytes:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen)
    value = {
        "w": w,
        "tied": w,
        "b": torch.arange(5, dtype=torch.int64),
        "h": torch.randn(6, generator=gen).to(torch.bfloat16),
        "expanded": torch.arange(3.0).expand(2, 3),
        "p": torch.nn.Parameter(torch.ones(2)),
        "cfg": {"lr": 0.1, "name": "run", "steps": [1, 2, (3, 4)], "ok": True, "x": None},
    }
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def _safetensors_seed() -> bytes:
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "a": torch.randn(3, 4, generator=gen),
        "b": torch.arange(6, dtype=torch.int32),
        "c": torch.randn(5, generator=gen).to(torch.float16),
    }
    return save(tensors, metadata={"format": "pt"})


def _numpy_seeds() -> tuple[bytes, bytes, bytes]:
    gen = np.random.default_rng(2)
    arrays = {"w": gen.standard_normal((4, 3)).astype(np.float32), "i": np.arange(5, dtype=">i8")}
    seeds = []
    for save_one in (
        lambda f: np.save(f, arrays["w"]),
        lambda f: np.savez(f, **arrays),
        lambda f: np.savez_compressed(f, **arrays),
    ):
        buf = io.BytesIO()
        save_one(buf)
        seeds.append(buf.getvalue())
    return seeds[0], seeds[1], seeds[2]


def _gguf_seed() -> bytes:
    import tempfile

    from tests.test_gguf import make_gguf

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.gguf"
        make_gguf(path)
        return path.read_bytes()


def _flax_seed() -> bytes:
    from tests.test_flax import make_state, to_bytes

    return to_bytes(make_state())


PYTORCH = _pytorch_seed()
SAFETENSORS = _safetensors_seed()
NPY, NPZ, NPZ_DEFLATED = _numpy_seeds()
GGUF = _gguf_seed()
FLAX = _flax_seed()


def _zip_fields(data: bytes) -> list[int]:
    """Offsets of the zip archive's size, count and offset fields."""
    fields = []
    for magic, offsets in (
        (b"PK\x03\x04", (14, 18, 22, 26, 28)),  # local header: crc, sizes, name/extra length
        (b"PK\x01\x02", (16, 20, 24, 28, 30, 32, 42)),  # central directory entry
        (b"PK\x05\x06", (8, 10, 12, 16, 20)),  # end of central directory
        (b"PK\x06\x06", (24, 32, 40, 48)),  # zip64 end of central directory
    ):
        at = data.find(magic)
        while at >= 0:
            fields.extend(at + o for o in offsets if at + o < len(data))
            at = data.find(magic, at + 1)
    return fields


def _safetensors_fields(data: bytes) -> list[int]:
    """Offset 0 (the header's length) and every number in the header."""
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length]
    return [0] + [8 + i for i, c in enumerate(header) if chr(c).isdigit()]


LARGE = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 63) - 1]


@st.composite
def _mutated(draw: st.DrawFn, seed: bytes, fields: list[int], digits: bool = False) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "truncate", "field", "field"]))
        if op == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            valid = [f for f in fields if f < len(data)]
            at = draw(st.sampled_from(valid) if valid else st.integers(0, len(data) - 1))
            if digits and at > 0:  # a number in a JSON header: write a large one
                value = str(draw(st.sampled_from(LARGE[3:]))).encode()
                end = at
                while end < len(data) and chr(data[end]).isdigit():
                    end += 1
                data[at:end] = value
            else:
                width = draw(st.sampled_from([2, 4, 8]))
                value = draw(st.sampled_from(LARGE)) & ((1 << (8 * width)) - 1)
                data[at : at + width] = value.to_bytes(width, "little")[: len(data) - at]
    return bytes(data)


def _assert_clear(answer: dict[str, Any]) -> None:
    """An error a user can read (one line), or an exact round trip."""
    assert "raw" not in answer, answer["raw"]
    if "error" in answer:
        message = answer["error"]
        assert message and "\n" not in message and "Traceback" not in message, message
    else:
        assert "manifest" in answer, answer


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_the_seeds_round_trip(worker: Worker) -> None:
    seeds = (
        ("model.pt", PYTORCH),
        ("model.safetensors", SAFETENSORS),
        ("a.npy", NPY),
        ("a.npz", NPZ),
        ("b.npz", NPZ_DEFLATED),
        ("m.gguf", GGUF),
        ("s.msgpack", FLAX),
    )
    for name, seed in seeds:
        answer = worker.ask("file", seed, name)
        assert "manifest" in answer, answer
        assert answer["identical"] or name == "model.pt", name
    assert worker.ask("file", SAFETENSORS, "model.safetensors")["identical"] is True


@pytest.mark.timeout(600)
@FUZZ
@given(data=_mutated(PYTORCH, _zip_fields(PYTORCH)))
def test_mutated_pytorch_files(worker: Worker, data: bytes) -> None:
    _assert_clear(worker.ask("file", data, "model.pt"))


@pytest.mark.timeout(600)
@FUZZ
@given(data=_mutated(SAFETENSORS, _safetensors_fields(SAFETENSORS), digits=True))
def test_mutated_safetensors_files(worker: Worker, data: bytes) -> None:
    answer = worker.ask("file", data, "model.safetensors")
    _assert_clear(answer)
    if "manifest" in answer:  # safetensors files come back byte-identical
        assert answer["identical"], data


def _no_members(data: bytes) -> bytes:
    """The archive's members with a central directory that lists none of them."""
    start = data.find(b"PK\x01\x02")
    return data[:start] + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0, 0, 0, start, 0)


def _first_bytes(data: bytes, count: int) -> list[int]:
    """The first ``count`` offsets: headers, counts and lengths live there."""
    return list(range(min(count, len(data))))


@pytest.mark.timeout(600)
@FUZZ
@given(
    data=st.one_of(
        _mutated(NPY, _first_bytes(NPY, 12)),
        _mutated(NPZ, _zip_fields(NPZ)),
        _mutated(NPZ_DEFLATED, _zip_fields(NPZ_DEFLATED)),
    )
)
@example(data=NPY[:7] + b"\x01" + NPY[8:])  # found: .npy version 1.1 was accepted
@example(data=_no_members(NPZ))  # found: an archive listing no arrays was accepted
def test_mutated_numpy_files(worker: Worker, data: bytes) -> None:
    _assert_clear(worker.ask("file", data, "arrays.npz"))


@pytest.mark.timeout(600)
@FUZZ
@given(
    named=st.one_of(
        _mutated(GGUF, _first_bytes(GGUF, 600)).map(lambda d: ("model.gguf", d)),
        _mutated(FLAX, _first_bytes(FLAX, 400)).map(lambda d: ("state.msgpack", d)),
    )
)
@example(named=("state.msgpack", FLAX.replace(b"\xc8\x02\x0f\x01", b"\xc8\x02\x0f\xff", 1)))
def test_mutated_gguf_and_flax_files(worker: Worker, named: tuple[str, bytes]) -> None:
    name, data = named
    answer = worker.ask("file", data, name)
    _assert_clear(answer)
    if "manifest" in answer and json.loads(answer["manifest"])["format"]["name"] != "file":
        assert answer["identical"], data  # both formats come back byte-identical


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*path, i))


HOSTILE_VALUES = st.sampled_from(
    [
        None,
        True,
        -1,
        0,
        1.5,
        10**12,
        2**64,
        10**400,
        "",
        "x",
        "0" * 200,
        [],
        {},
        [10**12],
        [-1, 2],
        {"tensor": "w"},
        {"list": [{"list": []}]},
        json.loads("[" * 200 + "]" * 200),
    ]
)


@st.composite
def _mutated_manifest(draw: st.DrawFn, text: str) -> bytes:
    if draw(st.booleans()):  # bytes: flips, truncations, large numbers
        data = text.encode()
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        return draw(_mutated(data, digits, digits=True))
    value = json.loads(text)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(list(_paths(value))[1:]))
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = copy.deepcopy(draw(HOSTILE_VALUES))  # the samples stay as they are
    return json.dumps(value).encode()


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("name", "seed"),
    [("model.pt", PYTORCH), ("model.safetensors", SAFETENSORS)],
    ids=["pytorch", "safetensors"],
)
def test_mutated_manifests(worker: Worker, name: str, seed: bytes) -> None:
    text = worker.ask("file", seed, name)["manifest"]

    @FUZZ
    @given(data=_mutated_manifest(text))
    def check(data: bytes) -> None:
        _assert_clear(worker.ask("manifest", data, name))

    check()


@pytest.mark.timeout(600)
def test_mutated_objects(worker: Worker) -> None:
    text = worker.ask("file", PYTORCH, "model.pt")["manifest"]
    manifest = json.loads(text)
    record = manifest["tensors"]["w"]["storage"]
    oid = record["objects"][0]["oid"]
    blob = (
        worker_root(worker) / "lfs" / "theta" / "objects" / oid[:2] / oid[2:4] / oid
    ).read_bytes()

    start = blob.find(b'{"')  # zarr.json's text: its numbers are sizes and shapes
    digits = [i for i in range(start, blob.find(b"PK", start)) if chr(blob[i]).isdigit()]

    @FUZZ
    @given(data=_mutated(blob, _zip_fields(blob)) | _mutated(blob, digits, digits=True))
    def check(data: bytes) -> None:
        stored = worker.ask("object", data)
        record["objects"][0] = {"oid": stored["oid"], "size": stored["size"]}
        answer = worker.ask("manifest", json.dumps(manifest).encode(), "model.pt")
        _assert_clear(answer)

    check()


def worker_root(worker: Worker) -> Path:
    return Path(worker.proc.args[-1])  # type: ignore[index]
