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


class _Recording(io.BytesIO):
    """An output that records the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: Any) -> int:
        self.sizes.append(memoryview(data).nbytes)
        return super().write(data)


def _streaming_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> Any:
    """A checkpoint with one 4 MiB tensor (streamed: the threshold is lowered to 2 MiB) and
    small ones, cleaned into a store; (path, manifest, store, config)."""
    from git_theta import config as theta_config
    from git_theta import filter as theta_filter
    from git_theta.manifest import Manifest
    from git_theta.store import ObjectStore

    monkeypatch.setattr(theta_filter, "STREAM_MIN_BYTES", 2 << 20)
    gen = torch.Generator().manual_seed(6)
    state = {
        "big": torch.randn(1024, 1024, generator=gen),
        "small": torch.randn(64, 32, generator=gen),
        "bias": torch.randn(7, generator=gen),
    }
    path = tmp_path / f"model.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    store = ObjectStore(tmp_path / "lfs")
    config = theta_config.load({"theta.threads": "2"})
    manifest = Manifest.from_bytes(theta_filter.clean(path, None, store, config))
    return path, manifest, store, config


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_checkout_streams_a_large_tensor_to_the_writer_as_it_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    from git_theta import filter as theta_filter

    path, manifest, store, config = _streaming_case(tmp_path, monkeypatch, fmt)
    taken: list[int] = []

    class Counted(theta_filter._Spares):
        def take(self, nbytes: int) -> bytearray:
            taken.append(nbytes)
            return super().take(nbytes)

    monkeypatch.setattr(theta_filter, "_Spares", Counted)
    out = _Recording()
    theta_filter.smudge(manifest, store, out, config)
    assert out.getvalue() == path.read_bytes()
    # the 4 MiB tensor went out in its four 1 MiB chunks, never as one buffer
    assert out.sizes.count(1 << 20) == 4 and max(out.sizes) == 1 << 20
    assert sorted(taken) == [7 * 4, 64 * 32 * 4]


def test_a_streamed_tensor_that_stops_decoding_is_finished_from_a_whole_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta import codec
    from git_theta import filter as theta_filter

    path, manifest, store, config = _streaming_case(tmp_path, monkeypatch, "pt")
    unblosc = codec._unblosc
    calls = []

    def third_fails(data: Any, out: memoryview) -> bool:  # of the big tensor's chunks
        if len(out) != 1 << 20:
            return unblosc(data, out)
        calls.append(len(out))
        return len(calls) != 3 and unblosc(data, out)

    monkeypatch.setattr(codec, "_unblosc", third_fails)
    out = _Recording()
    theta_filter.smudge(manifest, store, out, config)
    assert out.getvalue() == path.read_bytes()
    assert len(calls) > 4  # the whole tensor was decoded again after the third chunk


def test_a_streamed_tensor_is_verified_before_its_last_piece_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta import codec
    from git_theta import filter as theta_filter
    from git_theta.errors import CorruptObjectError

    path, manifest, store, config = _streaming_case(tmp_path, monkeypatch, "pt")
    big = manifest.tensors["big"]
    oid = big.objects[0].oid
    expected = (
        f"tensor `big`: rebuilt from object {oid[:12]}…, it does not match its recorded hash, "
        "though the objects are sound: the manifest is damaged (check it out again from a good "
        "commit)"
    )
    # a record whose BLAKE3 is another tensor's: found when its last piece has been written
    forged = replace(manifest, tensors={**manifest.tensors, "big": replace(big, blake3="0" * 64)})
    out = _Recording()
    with pytest.raises(CorruptObjectError) as caught:
        theta_filter.smudge(forged, store, out, config)
    assert str(caught.value) == expected
    assert out.sizes.count(1 << 20) == 3  # the last piece is checked before it goes

    # pieces decoded wrong before the direct decoding gave up: the whole decoding disagrees
    unblosc = codec._unblosc
    calls = []

    def garbled_then_refused(data: Any, out: memoryview) -> bool:  # the big tensor's chunks
        if len(out) != 1 << 20:
            return unblosc(data, out)
        calls.append(len(out))
        if len(calls) == 1:
            unblosc(data, out)
            out[:8] = b"garbage!"
            return True
        return len(calls) != 2 and unblosc(data, out)

    monkeypatch.setattr(codec, "_unblosc", garbled_then_refused)
    with pytest.raises(CorruptObjectError) as caught:
        theta_filter.smudge(manifest, store, _Recording(), config)
    assert str(caught.value) == expected


def test_a_streamed_tensor_in_git_thetas_own_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest without torch's recorded layout is written in git-theta's (CRC-32 in each
    local header, before the data): the large tensor streams there too."""
    from git_theta import codec
    from git_theta import filter as theta_filter

    path, manifest, store, config = _streaming_case(tmp_path, monkeypatch, "pt")
    own = replace(manifest, format={k: v for k, v in manifest.format.items() if k != "archive"})
    out = _Recording()
    theta_filter.smudge(own, store, out, config)
    assert out.sizes.count(1 << 20) == 4 and max(out.sizes) == 1 << 20
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as archive:
        assert archive.testzip() is None  # every CRC-32 and size right
    rebuilt = torch.load(io.BytesIO(out.getvalue()), weights_only=True)
    assert_same_object(torch.load(path, weights_only=True), rebuilt)
    assert codec.open_pieces(tmp_path / "no-such-object", 4, 1 << 20) is None
