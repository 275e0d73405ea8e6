"""The front-to-back zip writer used to rebuild torch files, ZIP64 paths included."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from git_theta import zipstream
from git_theta.formats import detect
from tests.helpers import assert_same_object


def _write(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    archive = zipstream.ZipStream(out, align=64)
    for name, data in members:
        archive.add(name, data)
    archive.close()
    return out.getvalue()


@pytest.mark.parametrize("limit", [zipstream.ZIP64_LIMIT, 100])
def test_members_read_back_aligned(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", limit)
    members = [("a/data.pkl", b"x" * 10), ("a/data/0", bytes(range(256)) * 3), ("a/e", b"")]
    blob = _write(members)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.testzip() is None
        assert [(i.filename, archive.read(i)) for i in archive.infolist()] == members
        for info in archive.infolist():
            header = blob[info.header_offset : info.header_offset + 30]
            name_len, extra_len = (
                int.from_bytes(header[26:28], "little"),
                int.from_bytes(header[28:30], "little"),
            )
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0


@pytest.mark.parametrize("limit", [zipstream.ZIP64_LIMIT, 64])
def test_rebuilt_torch_file_loads_with_zip64(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, limit: int
) -> None:
    gen = torch.Generator().manual_seed(1)
    original = {"w": torch.randn(40, 30, generator=gen), "b": torch.arange(7), "n": 3}
    src = tmp_path / "in.pt"
    torch.save(original, src)
    fmt = detect(src, "in.pt")
    checkpoint = fmt.read(src, "in.pt")
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", limit)
    out = tmp_path / "out.pt"
    with open(out, "wb") as f:
        fmt.write(checkpoint.format, checkpoint.tensors, checkpoint.aliases, f)
    assert_same_object(torch.load(out, weights_only=True), original)
    assert_same_object(torch.load(out, weights_only=True, mmap=True), original)


def test_checkout_writes_the_crc32s_recorded_at_add_without_computing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta import config as theta_config
    from git_theta import filter as theta_filter
    from git_theta.manifest import Manifest
    from git_theta.store import ObjectStore

    torch.save({"w": torch.randn(300, 20), "b": torch.arange(7)}, tmp_path / "model.pt")
    store, config = ObjectStore(tmp_path / "lfs"), theta_config.load({})
    manifest = Manifest.from_bytes(theta_filter.clean(tmp_path / "model.pt", None, store, config))
    assert all(record.crc32 is not None for record in manifest.tensors.values())
    computed: list[int] = []
    real = zipstream.zlib.crc32

    def counting(data: Any, *rest: Any) -> int:
        computed.append(len(data))
        return real(data, *rest)

    monkeypatch.setattr(zipstream.zlib, "crc32", counting)
    out = io.BytesIO()
    theta_filter.smudge(manifest, store, out, config)
    storages = 300 * 20 * 4 + 7 * 8
    assert sum(computed) < 1000  # the small records (data.pkl, version...), not the 24 KB of data
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as archive:
        assert archive.testzip() is None  # every CRC-32 is right
    # a manifest of schema 1 has no CRC-32s: checkout computes them, as before
    computed.clear()
    old = Manifest(
        manifest.format, {n: replace(r, crc32=None) for n, r in manifest.tensors.items()}
    )
    old_out = io.BytesIO()
    theta_filter.smudge(old, store, old_out, config)
    assert sum(computed) >= storages and old_out.getvalue() == out.getvalue()


def test_checkout_reuses_the_buffers_the_writer_is_done_with_and_never_one_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta import config as theta_config
    from git_theta import filter as theta_filter
    from git_theta import formats
    from git_theta.manifest import Manifest
    from git_theta.store import ObjectStore

    gen = torch.Generator().manual_seed(4)
    layers = {f"layer{i}.weight": torch.randn(512, 1024, generator=gen) for i in range(10)}
    torch.save({**layers, "bias": torch.randn(7, generator=gen)}, tmp_path / "model.pt")
    store = ObjectStore(tmp_path / "lfs")
    config = theta_config.load({"theta.threads": "2"})  # decoding 3 tensors ahead
    manifest = Manifest.from_bytes(theta_filter.clean(tmp_path / "model.pt", None, store, config))
    reused = []

    class Counted(theta_filter._Spares):
        def take(self, nbytes: int) -> bytearray:
            before = self._held
            buffer = super().take(nbytes)
            reused.append(self._held < before)
            return buffer

    monkeypatch.setattr(theta_filter, "_Spares", Counted)
    monkeypatch.setattr(theta_filter, "AHEAD_BYTES", 0)  # only the window decoded ahead
    out = io.BytesIO()
    theta_filter.smudge(manifest, store, out, config)
    assert out.getvalue() == (tmp_path / "model.pt").read_bytes()
    assert len(reused) == 11 and sum(reused) >= 5  # 2 MiB layers decode into used buffers

    # a writer that holds every tensor until it has them all: no buffer it holds is reused
    pytorch = formats.get("pytorch")
    held: dict[str, bytes] = {}

    class Hoarding:
        writes_buffers = True

        def __getattr__(self, name: str) -> Any:
            return getattr(pytorch, name)

        def write(self, spec: Any, tensors: Any, aliases: Any, out: Any) -> None:
            buffers = {name: t.load() for name, t in tensors.items()}  # all held at once
            held.update({name: bytes(b) for name, b in buffers.items()})

    monkeypatch.setattr(theta_filter.formats, "get", lambda name: Hoarding())
    reused.clear()
    theta_filter.smudge(manifest, store, io.BytesIO(), config)
    assert not any(reused)
    for name, tensor in layers.items():
        assert held[name] == tensor.numpy().tobytes()


@pytest.mark.parametrize(
    ("cores", "setting", "decoding"), [(2, 2, 1), (8, 8, 7), (8, 2, 2), (1, 4, 1), (4, 1, 1)]
)
def test_a_checkout_decodes_on_one_core_fewer_than_git_has(
    cores: int, setting: int, decoding: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta import filter as theta_filter
    from git_theta.config import Config
    from git_theta.manifest import Dense, Manifest, ObjectRef, TensorRecord, Xor

    monkeypatch.setattr(theta_filter.os, "cpu_count", lambda: cores)
    config = Config(threads=setting, compression="auto", compression_level=None, skip_smudge=False)
    dense = Dense(ObjectRef("a" * 64, 10))
    whole = TensorRecord("float32", (2,), "b" * 64, dense)
    assert theta_filter.decode_threads(config, Manifest({}, {"w": whole})) == decoding
    # a tensor rebuilt from a chain of updates costs more to decode than git to read
    xor = TensorRecord("float32", (2,), "c" * 64, Xor((dense.object,), "b" * 64, dense))
    chained = Manifest({}, {"w": whole, "x": xor})
    assert theta_filter.decode_threads(config, chained) == setting
