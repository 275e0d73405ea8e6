"""Fuzzers: valid checkpoints, pickles, manifests, objects and filter-protocol streams with
bits flipped, bytes cut off, length fields set to large values and opcodes spliced in. Each
must give one clear error or an exact round trip; never a crash, a hang, or raw exception
text.

Each fuzzer first replays its corpus (``tests/fuzz_corpus/<fuzzer>/``: every input that
ever found a defect, and the hostile inputs of the hostile-input issue), then draws inputs
until its time budget is spent: ``GIT_THETA_FUZZ_SECONDS`` per fuzzer (CI: 12 s each, the
same seeds every run; ``scripts/fuzz``: long, random seeds, and an input that fails is
saved into the corpus, where it stays a regression test).

The product runs in a worker process (tests/fuzz_worker.py) or as ``git-theta
filter-process`` under an address-space limit, and every answer has a deadline, so a
regression fails a test instead of exhausting the machine.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import json
import os
import random
import re
import resource
import selectors
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from safetensors.torch import save

from tests.helpers import claiming
from tests.test_hostile import (
    REBUILD_SIZE,
    _cycle,
    _deep,
    _inflating,
    _saved,
    _shared,
    _with_pickle,
)

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 4 << 30
ANSWER_SECONDS = 30
CORPUS = ROOT / "tests" / "fuzz_corpus"
BUDGET = float(os.environ.get("GIT_THETA_FUZZ_SECONDS", "12"))  # seconds per fuzzer
RANDOM = bool(os.environ.get("GIT_THETA_FUZZ_RANDOM"))  # random seeds, not 0, 1, 2, ...
SAVE = bool(os.environ.get("GIT_THETA_FUZZ_SAVE"))  # a failing input joins the corpus
CHUNK = 20  # inputs per Hypothesis run; runs repeat until the budget is spent
FUZZ_TIMEOUT = int(2 * BUDGET) + 300  # a hung run fails; a long budget is not one


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


def corpus(fuzzer: str) -> list[bytes]:
    """The kept inputs of ``fuzzer``, in name order."""
    folder = CORPUS / fuzzer
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []


def _keep(fuzzer: str, data: bytes) -> Path:
    folder = CORPUS / fuzzer
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha256(data).hexdigest()[:16]
    path.write_bytes(data)
    return path


def fuzz(
    fuzzer: str,
    strategy: st.SearchStrategy[bytes],
    check: Callable[[bytes], None],
    examples: Iterable[bytes] = (),
) -> int:
    """Runs ``check`` on ``examples`` and the corpus of ``fuzzer``, then on inputs drawn
    from ``strategy`` until the budget is spent (at least one run); returns how many were
    drawn. A failure is shrunk by Hypothesis and reported with its input (and saved to the
    corpus under ``GIT_THETA_FUZZ_SAVE``)."""
    for data in [*examples, *corpus(fuzzer)]:
        check(data)
    failed: list[bytes] = []
    drawn = 0

    def recorded(data: bytes) -> None:
        nonlocal drawn
        drawn += 1
        try:
            check(data)
        except BaseException:
            failed.append(data)  # the last one failing is the shrunk input Hypothesis reports
            raise

    deadline = time.monotonic() + BUDGET
    run = 0
    while run == 0 or time.monotonic() < deadline:
        chosen = random.getrandbits(64) if RANDOM else run
        test = seed(chosen)(
            settings(
                max_examples=CHUNK,
                deadline=None,
                database=None,
                derandomize=False,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )(given(strategy)(recorded))
        )
        try:
            test()
        except BaseException:
            if SAVE and failed:
                print(f"fuzz: the failing input is kept in {_keep(fuzzer, failed[-1])}")
            raise
        run += 1
    return drawn


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
    for name, data in seeds:
        answer = worker.ask("file", data, name)
        assert "manifest" in answer, answer
        assert answer["identical"] or name == "model.pt", name
    assert worker.ask("file", SAFETENSORS, "model.safetensors")["identical"] is True


def _check_file(worker: Worker, name: str, identical: bool = False) -> Callable[[bytes], None]:
    """One clear line or a round trip for file ``name``; ``identical``: byte for byte."""

    def check(data: bytes) -> None:
        answer = worker.ask("file", data, name)
        _assert_clear(answer)
        stored = json.loads(answer["manifest"])["format"]["name"] if "manifest" in answer else ""
        if identical and stored not in ("", "file"):
            assert answer["identical"], data

    return check


# -- the hostile inputs of the hostile-input issue, and defects the fuzzers found ----------


def _zip_version(data: bytes, version: int) -> bytes:
    """Every header of the archive claiming it needs zip ``version`` to extract."""
    out = bytearray(data)
    for magic, at in ((b"PK\x03\x04", 4), (b"PK\x01\x02", 6)):
        found = out.find(magic)
        while found >= 0:
            out[found + at : found + at + 2] = version.to_bytes(2, "little")
            found = out.find(magic, found + 1)
    return bytes(out)


def _pickle_of(value: object) -> bytes:
    with zipfile.ZipFile(io.BytesIO(_saved(value))) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


HOSTILE_PICKLES = [
    REBUILD_SIZE,
    _pickle_of({"x": _shared(60)}),
    _pickle_of({"x": _cycle()}),
    _pickle_of({"x": _deep(300)}),
    _pickle_of({"x": 10**100_000}),
]
HOSTILE_ARCHIVES = [
    _inflating("/data.pkl", 128 << 20),  # more than the 64 MiB a data.pkl may hold
    _inflating("/byteorder", 16 << 20),  # more than the 16 bytes of a byteorder
    _zip_version(PYTORCH, 84),  # zip 8.4, which zipfile refused with NotImplementedError
    _zip_version(PYTORCH, 0xFFFF),
    # views repeating their storage: 200 KB and one float claiming 9.3 GiB each
    _saved({"w": torch.arange(50000.0).as_strided((50000, 50000), (0, 1))}),
    _saved({"z": torch.arange(16.0).as_strided((50000, 50000), (0, 0))}),
]


# -- the fuzzers ---------------------------------------------------------------------------


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_pytorch_archives(worker: Worker) -> None:
    fuzz(
        "pytorch-zip",
        _mutated(PYTORCH, _zip_fields(PYTORCH)),
        _check_file(worker, "model.pt"),
        HOSTILE_ARCHIVES,
    )


# opcodes and whole instructions of pickle protocol 2, spliced into a valid pickle
OPCODES = [
    *(bytes([c]) for c in b"(.0)NRQ]abdehlrstu}" + bytes(range(0x80, 0x96))),
    b"K\x05",
    b"M\xff\xff",
    b"J\xff\xff\xff\x7f",
    b"\x8a\x08" + bytes(8),
    b"X\xff\xff\xff\x7f",
    b"X\x01\x00\x00\x00w",
    b"h\x00",
    b"q\x01",
    b"j\xff\xff\xff\x7f",
    b"\x95" + (1 << 62).to_bytes(8, "little"),
    b"cbuiltins\neval\n",
    b"cposix\nsystem\n",
    b"ctorch\nSize\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ccollections\nOrderedDict\n",
    b"X\x07\x00\x00\x00storage",
]


@st.composite
def _spliced_pickle(draw: st.DrawFn, pickle_bytes: bytes) -> bytes:
    data = bytearray(pickle_bytes)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete", "flip"]))
        piece = draw(st.sampled_from(OPCODES))
        if op == "insert":
            data[at:at] = piece
        elif op == "replace":
            data[at : at + len(piece)] = piece
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_the_pickle_reader(worker: Worker) -> None:
    pickle_bytes = _pickle_of(torch.load(io.BytesIO(PYTORCH), weights_only=True))
    check = _check_file(worker, "model.pt")
    fuzz(
        "pytorch-pickle",
        _spliced_pickle(pickle_bytes),
        lambda data: check(_with_pickle(PYTORCH, data)),
        HOSTILE_PICKLES,
    )


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_safetensors_headers(worker: Worker) -> None:
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000  # a header nested 5000 deep
    fuzz(
        "safetensors",
        _mutated(SAFETENSORS, _safetensors_fields(SAFETENSORS), digits=True),
        _check_file(worker, "model.safetensors", identical=True),
        [struct.pack("<Q", len(nested)) + nested],
    )


def _no_members(data: bytes) -> bytes:
    """The archive's members with a central directory that lists none of them."""
    start = data.find(b"PK\x01\x02")
    return data[:start] + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0, 0, 0, start, 0)


def _first_bytes(data: bytes, count: int) -> list[int]:
    """The first ``count`` offsets: headers, counts and lengths live there."""
    return list(range(min(count, len(data))))


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_numpy_files(worker: Worker) -> None:
    fuzz(
        "numpy",
        st.one_of(
            _mutated(NPY, _first_bytes(NPY, 12)),
            _mutated(NPZ, _zip_fields(NPZ)),
            _mutated(NPZ_DEFLATED, _zip_fields(NPZ_DEFLATED)),
        ),
        _check_file(worker, "arrays.npz"),
        [
            NPY[:7] + b"\x01" + NPY[8:],  # found: .npy version 1.1 was accepted
            _no_members(NPZ),  # found: an archive listing no arrays was accepted
        ],
    )


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_gguf_files(worker: Worker) -> None:
    fuzz("gguf", _mutated(GGUF, _first_bytes(GGUF, 600)), _check_file(worker, "m.gguf", True))


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_flax_files(worker: Worker) -> None:
    fuzz(
        "flax",
        _mutated(FLAX, _first_bytes(FLAX, 400)),
        _check_file(worker, "state.msgpack", identical=True),
        # found: a msgpack timestamp (extension type -1) was read as a flax array
        [FLAX.replace(b"\xc8\x02\x0f\x01", b"\xc8\x02\x0f\xff", 1)],
    )


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


def _hostile_manifests(text: str, name: str) -> list[bytes]:
    """The hostile manifests of the hostile-input issue, and the defects the fuzzers found,
    made from the seed's manifest."""
    found: list[dict[str, Any]] = []

    def edited(change: Callable[[dict[str, Any]], None]) -> None:
        manifest = json.loads(text)
        change(manifest)
        found.append(manifest)

    edited(lambda m: m.update(git_theta="1"))  # schema version a string
    edited(lambda m: m.update(tensors=[]))  # a tensors table that is a list
    edited(lambda m: m.update(aliases=5))
    if name == "model.pt":
        root = {"dict": [[{"list": []}, {"tensor": "w"}]]}  # a list as a dict key
        edited(lambda m: m["format"].update(root=root))
        view = {"shape": [1 << 40, 1 << 40], "stride": [0, 1]}  # a view past its span
        root = {"dict": [["w", {"tensor": "w", "view": view}]]}
        edited(lambda m: m["format"].update(root=root))
        twice = {"dict": [["w", {"tensor": "w"}], ["w", {"tensor": "b"}]]}  # a key twice
        edited(lambda m: m["format"].update(root=twice))
        unsorted = {"dict": [["s", {"set": [{"int": 3}, {"int": 1}]}], ["w", {"tensor": "w"}]]}
        edited(lambda m: m["format"].update(root=unsorted))
    else:
        header = json.loads(json.loads(text)["format"]["header"])
        header["b"]["data_offsets"] = [4, 12]  # tensors that overlap
        edited(lambda m: m["format"].update(header=json.dumps(header)))
        edited(lambda m: m["format"].pop("header"))
    return [json.dumps(m).encode() for m in found]


@pytest.mark.timeout(FUZZ_TIMEOUT)
@pytest.mark.parametrize(
    ("name", "valid"),
    [("model.pt", PYTORCH), ("model.safetensors", SAFETENSORS)],
    ids=["pytorch", "safetensors"],
)
def test_fuzz_manifests(worker: Worker, name: str, valid: bytes) -> None:
    text = worker.ask("file", valid, name)["manifest"]
    fuzzer = "manifest-" + ("pytorch" if name == "model.pt" else "safetensors")

    def check(data: bytes) -> None:
        _assert_clear(worker.ask("manifest", data, name))

    fuzz(fuzzer, _mutated_manifest(text), check, _hostile_manifests(text, name))


def _claimed_shape(blob: bytes) -> list[int] | None:
    """The shape an object's zarr.json claims, when it can be read."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            shape = json.loads(archive.read("zarr.json"))["shape"]
    except Exception:
        return None
    ok = isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
    return shape if ok else None


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_objects(worker: Worker) -> None:
    """Objects with damaged bytes; the manifest's record claims the shape the object does,
    so a claim passes the comparison and must be checked against the data."""
    text = worker.ask("file", PYTORCH, "model.pt")["manifest"]
    manifest = json.loads(text)
    record = manifest["tensors"]["w"]
    shape = list(record["shape"])
    oid = record["storage"]["objects"][0]["oid"]
    blob = (
        worker_root(worker) / "lfs" / "theta" / "objects" / oid[:2] / oid[2:4] / oid
    ).read_bytes()
    start = blob.find(b'{"')  # zarr.json's text: its numbers are sizes and shapes
    digits = [i for i in range(start, blob.find(b"PK", start)) if chr(blob[i]).isdigit()]

    def check(data: bytes) -> None:
        stored = worker.ask("object", data)
        record["storage"]["objects"][0] = {"oid": stored["oid"], "size": stored["size"]}
        claimed = _claimed_shape(data)
        record["shape"] = claimed if claimed is not None else shape
        _assert_clear(worker.ask("manifest", json.dumps(manifest).encode(), "model.pt"))

    fuzz(
        "object",
        _mutated(blob, _zip_fields(blob)) | _mutated(blob, digits, digits=True),
        check,
        [claiming(blob, 10**12, keep_chunks=True), claiming(blob, 1 << 28, keep_chunks=False)],
    )


def worker_root(worker: Worker) -> Path:
    return Path(worker.proc.args[-1])  # type: ignore[index]


# -- the filter protocol: `git-theta filter-process` as git starts it ---------------------


@pytest.fixture(scope="module")
def filter_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository where git-theta's filter serves ``model.safetensors``, with one
    committed version (so that its manifest is a valid smudge request)."""
    from tests.helpers import Repo

    repo = Repo.init(tmp_path_factory.mktemp("protocol") / "repo")
    repo.theta("install", "--local")
    repo.theta("track", "model.safetensors")
    (repo.path / "model.safetensors").write_bytes(SAFETENSORS)
    repo.commit_file(".", "v1")
    return repo.path


def _packet_offsets(stream: bytes) -> list[int]:
    """Where each pkt-line's 4-digit length is."""
    from git_theta.gitio import pktline

    found, reader = [], io.BytesIO(stream)
    while reader.tell() < len(stream):
        found.append(reader.tell())
        with contextlib.suppress(EOFError):
            pktline.read_packet(reader)
    return found


LENGTHS = [b"0000", b"0001", b"0002", b"0003", b"0004", b"0005", b"fff0", b"fff4", b"ffff", b"zzzz"]


@st.composite
def _mutated_stream(draw: st.DrawFn, stream: bytes) -> bytes:
    data = bytearray(stream)
    offsets = _packet_offsets(stream)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["length", "length", "flip", "truncate", "text"]))
        if op == "length":  # a pkt-line length: flush, delimiters, too short, too long
            at = draw(st.sampled_from(offsets))
            data[at : at + 4] = draw(st.sampled_from(LENGTHS))
        elif op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        else:  # another header line: a command, a path or a capability git never sends
            line = draw(
                st.sampled_from(
                    [
                        b"command=list_available_blobs\n",
                        b"command=exec\n",
                        b"pathname=../../etc/passwd\n",
                        b"pathname=\n",
                        b"can-delay=1\n",
                        b"capability=\xff\xfe\n",
                        b"version=3\n",
                        b"no-equals-sign\n",
                    ]
                )
            )
            at = draw(st.sampled_from(offsets))
            data[at:at] = f"{len(line) + 4:04x}".encode() + line
    return bytes(data)


def _limits_and_session() -> None:
    _limits()
    os.setsid()


RAW = re.compile(r"\b(Traceback|[A-Z][A-Za-z]*(Error|Exception)\b: )")


@pytest.mark.timeout(FUZZ_TIMEOUT)
def test_fuzz_the_filter_protocol(filter_repo: Path) -> None:
    from git_theta.gitio import pktline
    from tests.test_protocol import HANDSHAKE_IN, request

    manifest = subprocess.run(
        ["git", "cat-file", "blob", "HEAD:model.safetensors"],
        cwd=filter_repo,
        capture_output=True,
        check=True,
    ).stdout
    valid = (
        HANDSHAKE_IN
        + request("clean", "model.safetensors", SAFETENSORS)
        + request("smudge", "model.safetensors", manifest)
    )

    def check(stream: bytes) -> None:
        proc = subprocess.Popen(
            ["git-theta", "filter-process"],
            cwd=filter_repo,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_limits_and_session,
        )
        try:
            out, err = proc.communicate(stream, timeout=ANSWER_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            pytest.fail(f"no end within {ANSWER_SECONDS} s to this stream: {stream!r:.3000}")
        text = err.decode(errors="replace")
        assert proc.returncode in (0, 1), (proc.returncode, text, stream)
        for line in text.splitlines():  # every line for people is git-theta's one line
            assert line.startswith("git-theta: ") and not RAW.search(line), (line, stream)
        answers = io.BytesIO(out)  # stdout is pkt-lines only
        while answers.tell() < len(out):
            pktline.read_packet(answers)
        if stream == valid:  # the seed works: both files answered, nothing reported
            assert proc.returncode == 0 and text == "", text
            assert out.count(b"status=success") == 2, out

    fuzz("filter-protocol", _mutated_stream(valid), check, [valid])
