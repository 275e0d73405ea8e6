"""Delta encodings (xor, sparse): records, chains, the auto policy, bit-exact rebuilds."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from git_theta import config as theta_config
from git_theta import tensors, updates
from git_theta.errors import CorruptObjectError, ManifestError
from git_theta.manifest import Dense, Manifest, Sparse, TensorRecord, Xor, depth
from git_theta.store import ObjectRef, ObjectStore

from .helpers import Repo
from .lfs_server import LfsServer

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)
OID = [f"{i:x}" * 64 for i in range(1, 6)]


def words_of(dtype_name: str, count: int, seed: int) -> np.ndarray:
    itemsize = tensors.dtype(dtype_name).itemsize
    raw = np.random.default_rng(seed).bytes(count * itemsize)
    return np.frombuffer(raw, dtype=tensors.word_dtype(itemsize)).copy()


def store_versions(
    versions: list[np.ndarray], dtype_name: str, store: ObjectStore, **settings: str
) -> list[TensorRecord]:
    """Store each version of one tensor, each with the previous one's record as its base."""
    config = theta_config.load({f"theta.{k}": v for k, v in settings.items()})
    itemsize = tensors.dtype(dtype_name).itemsize
    shape = (versions[0].nbytes // itemsize,)
    records: list[TensorRecord] = []
    for words in versions:
        base = records[-1] if records else None
        records.append(updates.store_tensor(dtype_name, shape, words, store, config, base=base))
    return records


# ------------------------------------------------------------------------------ records


def test_a_chain_record_lists_every_object_and_round_trips() -> None:
    root = Dense(ObjectRef(OID[0], 10))
    xor = Xor((ObjectRef(OID[1], 20),), "a" * 64, root)
    sparse = Sparse((ObjectRef(OID[2], 30), ObjectRef(OID[3], 40)), "b" * 64, xor, 7)
    assert [o.oid for o in sparse.objects] == [OID[2], OID[3], OID[1], OID[0]]
    assert depth(sparse) == 2 and depth(root) == 0
    assert sparse.to_json() == {
        "encoding": "sparse",
        "objects": [
            {"oid": OID[2], "size": 30},
            {"oid": OID[3], "size": 40},
            {"oid": OID[1], "size": 20},
            {"oid": OID[0], "size": 10},
        ],
        "chain": [
            {"encoding": "sparse", "base": "b" * 64, "objects": 2, "changed": 7},
            {"encoding": "xor", "base": "a" * 64, "objects": 1},
            {"encoding": "dense", "objects": 1},
        ],
    }
    record = TensorRecord("float32", (4,), "c" * 64, sparse, 5)
    manifest = Manifest({"name": "safetensors"}, {"w": record})
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


def _chain_record(**change: object) -> dict[str, object]:
    value = Xor((ObjectRef(OID[1], 20),), "a" * 64, Dense(ObjectRef(OID[0], 10))).to_json()
    value.update(change)
    return value


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (_chain_record(chain=[{"encoding": "dense", "objects": 1}]), "malformed or longer"),
        (
            _chain_record(chain=[{"encoding": "xor", "base": "a" * 64, "objects": 1}] * 2),
            "malformed",
        ),
        (_chain_record(encoding="sparse"), "malformed"),
        (_chain_record(objects=[{"oid": OID[1], "size": 20}]), "malformed"),
        (
            _chain_record(
                chain=[
                    {"encoding": "xor", "base": "zz", "objects": 1},
                    {"encoding": "dense", "objects": 1},
                ]
            ),
            "invalid hash",
        ),
        (
            _chain_record(
                chain=[
                    {"encoding": "xor", "base": "a" * 64, "objects": 2},
                    {"encoding": "dense", "objects": 0},
                ]
            ),
            "dense but lists 0 objects",
        ),
        (
            _chain_record(
                chain=[{"encoding": "xor", "base": "a" * 64, "objects": 0}] * 65
                + [{"encoding": "dense", "objects": 2}]
            ),
            "longer than 64 updates",
        ),
        (
            _chain_record(
                encoding="sparse",
                chain=[
                    {"encoding": "sparse", "base": "a" * 64, "objects": 1, "changed": 0},
                    {"encoding": "dense", "objects": 1},
                ],
            ),
            "malformed",
        ),
        (
            _chain_record(
                chain=[
                    {"encoding": "xor", "base": "a" * 64, "objects": 1},
                    {"encoding": "ia4", "objects": 1},
                ]
            ),
            "uses encoding `ia4`, which this git-theta does not know: upgrade git-theta",
        ),
    ],
)
def test_a_damaged_chain_is_one_clear_error(storage: dict[str, object], message: str) -> None:
    value = {
        "git_theta": 2,
        "format": {"name": "safetensors"},
        "tensors": {"w": {"dtype": "float32", "shape": [4], "hash": "c" * 64, "storage": storage}},
    }
    with pytest.raises(ManifestError, match="tensor `w`") as info:
        Manifest.from_bytes(json.dumps(value).encode())
    assert message in str(info.value)


# ------------------------------------------------------------------------ the encodings


def _changed(words: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    new = words.copy()
    rng = np.random.default_rng(seed)
    picked = rng.random(words.size) < fraction
    new[picked] ^= rng.integers(1, 255, picked.sum()).astype(words.dtype)
    return new


@SETTINGS
@given(
    dtype_name=st.sampled_from(sorted(tensors.DTYPES)),
    count=st.integers(1, 3000),
    fractions=st.lists(st.sampled_from([0.0005, 0.01, 0.3, 1.0]), min_size=1, max_size=4),
    update_type=st.sampled_from(["auto", "xor", "sparse"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_encoding_rebuilds_every_dtype_bit_exact(
    dtype_name: str, count: int, fractions: list[float], update_type: str, seed: int
) -> None:
    import tempfile

    versions = [words_of(dtype_name, count, seed)]
    for i, fraction in enumerate(fractions):
        new = _changed(versions[-1], fraction, seed + i + 1)
        if np.array_equal(new, versions[-1]):
            new[0] ^= 1
        versions.append(new)
    with tempfile.TemporaryDirectory() as tmp:
        store = ObjectStore(Path(tmp))
        records = store_versions(versions, dtype_name, store, updateType=update_type)
        for words, record in zip(versions, records, strict=True):
            assert updates.decode(record, store).tobytes() == words.tobytes()
            assert record.hash == tensors.identity_hash(dtype_name, record.shape, words)
            shown = Manifest({"name": "safetensors"}, {"w": record})
            assert Manifest.from_bytes(shown.to_bytes()) == shown
        if update_type != "auto":  # each version after the first is that update
            assert {r.encoding for r in records[1:]} == {update_type}
            assert [depth(r.storage) for r in records] == list(range(len(records)))


def test_auto_stores_the_smallest_and_chains_stop_at_their_depth(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(100_000).astype(np.float32)
    sparse_step = weights.copy()
    sparse_step[rng.choice(weights.size, 1000, replace=False)] += 0.5
    moved = sparse_step * np.float32(1.001)  # every weight moves a little: xor
    # moved again: a second XOR would make the chain's updates outweigh the dense copy
    again = moved * np.float32(1.001)
    fresh = rng.standard_normal(100_000).astype(np.float32)  # re-initialised: dense
    versions = [v.view(np.uint32) for v in (weights, sparse_step, moved, again, fresh)]
    records = store_versions(versions, "float32", store)
    assert [r.encoding for r in records] == ["dense", "sparse", "xor", "dense", "dense"]
    sizes = [sum(o.size for o in r.storage.own) for r in records[1:3]]  # type: ignore[attr-defined]
    assert sizes[0] < 0.02 * weights.nbytes and sizes[1] < 0.7 * weights.nbytes

    steps = [versions[0]]
    for i in range(5):
        steps.append(_changed(steps[-1], 0.01, i))
    records = store_versions(steps, "float32", store, maxChainDepth="2")
    assert [depth(r.storage) for r in records] == [0, 1, 2, 0, 1, 2]
    for words, record in zip(steps, records, strict=True):
        assert np.array_equal(updates.decode(record, store), words)
    dense = store_versions(steps[:2], "float32", store, updateType="dense")
    assert [r.encoding for r in dense] == ["dense", "dense"]


def test_a_sparse_update_out_of_range_is_refused(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    base = words_of("float32", 1000, 1)
    new = base.copy()
    new[[3, 500]] ^= 7
    record = store_versions([base, new], "float32", store, updateType="sparse")[1]
    assert isinstance(record.storage, Sparse) and record.storage.changed == 2
    config = theta_config.load({})
    for gaps in ([3, 997], [500, 0]):  # past the end; not increasing
        forged = updates.finish(
            updates.start_encode(np.array(gaps, dtype="<u4"), config, "uint32"), store, config
        )
        own = (forged.objects[0], record.storage.own[1])
        bad = Sparse(own, record.storage.base, record.storage.rest, 2)
        with pytest.raises(CorruptObjectError, match="positions are out of order or range"):
            updates.decode(TensorRecord("float32", (1000,), record.hash, bad), store)


# --------------------------------------------------------------------------- end to end


def _save(path: Path, weights: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(weights, str(path))


def test_commits_store_only_the_change_and_every_version_checks_out(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    repo = Repo.init(tmp_path / "repo")
    repo.theta("install", "--local")
    repo.theta("track", "model.safetensors")
    rng = np.random.default_rng(5)
    weights = {f"w{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(4)}
    versions = []
    for step in range(4):
        if step:
            for w in weights.values():  # 1% of the entries of every tensor
                picked = rng.random(w.shape) < 0.01
                w[picked] += rng.standard_normal(picked.sum()).astype(np.float32)
        _save(repo.path / "model.safetensors", weights)
        before = repo.store_bytes()
        repo.git("add", "-A")
        repo.git("commit", "-qm", f"step {step}")
        versions.append({k: v.copy() for k, v in weights.items()})
        grown = repo.store_bytes() - before
        total = sum(w.nbytes for w in weights.values())
        assert grown < (total if step == 0 else 0.025 * total)
    manifest = Manifest.from_bytes(repo.blob("HEAD:model.safetensors"))
    assert {depth(r.storage) for r in manifest.tensors.values()} == {3}
    for step, expected in enumerate(versions):
        (repo.path / "model.safetensors").unlink()
        repo.git("checkout", f"HEAD~{3 - step}", "--", "model.safetensors")
        loaded = load_file(str(repo.path / "model.safetensors"))
        assert all(loaded[k].tobytes() == v.tobytes() for k, v in expected.items())
    repo.git("checkout", "HEAD", "--", "model.safetensors")
    assert repo.status() == ""
    assert repo.theta("fsck", "--all").returncode == 0
    diff = repo.theta("diff", "HEAD~1", "HEAD").stdout
    assert "modified" in diff and "w0" in diff
    (line,) = [
        ln
        for ln in repo.theta("show", "HEAD:model.safetensors").stdout.splitlines()
        if ln.startswith("w0 ")
    ]
    size = r"[\d.]+ (B|KiB|MiB)"
    assert re.fullmatch(
        rf"w0  float32  \[256, 256\]  sparse \(3 updates deep\)  {size} of {size}", line
    )


def _fine_tune(weights: dict[str, np.ndarray], seed: int, names: list[str] | None = None) -> None:
    """1% of the entries of the named tensors (all by default) move, in place."""
    rng = np.random.default_rng(seed)
    for name in names or list(weights):
        w = weights[name]
        picked = rng.random(w.shape) < 0.01
        w[picked] += rng.standard_normal(picked.sum()).astype(w.dtype)


def _chained_repo(repo: Repo, steps: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``steps`` + 1 commits of model.safetensors, each 1% changed: (commit, weights)."""
    rng = np.random.default_rng(9)
    weights = {f"w{i}": rng.standard_normal((128, 128)).astype(np.float32) for i in range(3)}
    commits = []
    for step in range(steps + 1):
        if step:
            _fine_tune(weights, step)
        _save(repo.path / "model.safetensors", weights)
        commits.append(
            (
                repo.commit_file("model.safetensors", f"step {step}"),
                {k: v.copy() for k, v in weights.items()},
            )
        )
    return commits


def _assert_checks_out(repo: Repo, commits: list[tuple[str, dict[str, np.ndarray]]]) -> None:
    from safetensors.numpy import load_file

    for sha, expected in commits:
        (repo.path / "model.safetensors").unlink()
        repo.git("checkout", sha, "--", "model.safetensors")
        loaded = load_file(str(repo.path / "model.safetensors"))
        assert {k: v.tobytes() for k, v in loaded.items()} == {
            k: v.tobytes() for k, v in expected.items()
        }
    repo.git("checkout", "HEAD", "--", "model.safetensors")


def test_squash_stores_chains_whole_and_gc_keeps_every_commit(tmp_path: Path) -> None:
    repo = Repo.tracking(tmp_path / "repo", "model.safetensors")
    commits = _chained_repo(repo, 3)
    assert repo.theta("squash").stdout == (
        "model.safetensors: 3 tensors stored whole (chains of up to 3 updates); "
        "commit to record it\n"
    )
    assert repo.status() == "M  model.safetensors\n"  # staged; the work tree is the same
    manifest = Manifest.from_bytes(repo.blob(":model.safetensors"))
    assert {r.encoding for r in manifest.tensors.values()} == {"dense"}
    before = Manifest.from_bytes(repo.blob("HEAD:model.safetensors"))
    assert {n: r.hash for n, r in manifest.tensors.items()} == {
        n: r.hash for n, r in before.tensors.items()
    }
    repo.git("commit", "-qm", "squash")
    commits.append((repo.git("rev-parse", "HEAD").stdout.strip(), commits[-1][1]))
    assert repo.theta("squash").stdout == (
        "model.safetensors: every tensor is already stored whole\n"
    )
    repo.theta("gc", "--prune=now")
    assert repo.theta("fsck", "--all").returncode == 0
    _assert_checks_out(repo, commits)

    # history rewritten: the squashed commit alone; gc then frees the chains' objects
    repo.git("checkout", "-q", "--orphan", "fresh")
    repo.git("commit", "-qm", "only the squashed checkpoint")
    repo.git("branch", "-D", "main")
    repo.git("reflog", "expire", "--expire=now", "--all")
    kept = repo.objects()
    repo.theta("gc", "--prune=now")
    assert repo.objects() == {o.oid for r in manifest.tensors.values() for o in r.objects}
    assert repo.objects() < kept
    _assert_checks_out(repo, commits[-1:])
    assert repo.theta("squash", "nothing.pt", check=False).stderr == (
        "git-theta: error: nothing.pt: no checkpoint tracked by git-theta is staged there\n"
    )


def test_chains_push_clone_and_merge(shared: tuple[Repo, Path, LfsServer], tmp_path: Path) -> None:
    a, bare, server = shared
    a.theta("track", "model.safetensors")
    a.commit_file(".gitattributes", "track safetensors")
    commits = _chained_repo(a, 2)
    a.git("push", "-q", "-u", "origin", "main")
    assert server.objects() == a.objects()

    b = Repo(tmp_path / "b")
    subprocess.run(["git", "clone", "-q", str(bare), str(b.path)], check=True)
    assert b.status() == ""
    _assert_checks_out(b, commits)
    assert b.theta("fsck", "--all").returncode == 0

    # one side changes w0, the other w1, each as an update of the shared version
    weights = {k: v.copy() for k, v in commits[-1][1].items()}
    b.git("checkout", "-q", "-b", "side")
    _fine_tune(weights, 20, ["w1"])
    _save(b.path / "model.safetensors", weights)
    b.commit_file("model.safetensors", "side: w1")
    b.git("checkout", "-q", "main")
    ours = {k: v.copy() for k, v in commits[-1][1].items()}
    _fine_tune(ours, 21, ["w0"])
    _save(b.path / "model.safetensors", ours)
    b.commit_file("model.safetensors", "main: w0")
    b.git("merge", "-q", "--no-edit", "side")
    merged = {**ours, "w1": weights["w1"]}
    _assert_checks_out(b, [(b.git("rev-parse", "HEAD").stdout.strip(), merged)])
    manifest = Manifest.from_bytes(b.blob("HEAD:model.safetensors"))
    assert {n: r.encoding for n, r in manifest.tensors.items()} == {
        "w0": "sparse",
        "w1": "sparse",
        "w2": "sparse",
    }
    b.git("push", "-q", "origin", "main")
    assert server.objects() == b.objects()


@SETTINGS
@given(
    dtype_name=st.sampled_from(["float32", "bfloat16", "float16", "float64"]),
    shape=st.sampled_from([(5, 7), (3, 2, 4), (1, 9), (6, 1)]),
    rank=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 3.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_rebuild_is_the_same_block_by_block(
    dtype_name: str, shape: tuple[int, ...], rank: int, scale: float, seed: int
) -> None:
    from git_theta.methods import float_type
    from git_theta.updates import rebuild

    rng = np.random.default_rng(seed)
    kind = float_type(dtype_name)
    count = int(np.prod(shape))
    base = rng.standard_normal(count).astype(kind).view(tensors.word_dtype(np.dtype(kind).itemsize))
    rows, cols = shape[0], count // shape[0]
    r = rng.standard_normal((rows, rank)).astype(np.float32)
    c = rng.standard_normal((rank, cols)).astype(np.float32)
    s = rng.standard_normal(shape[-1:]).astype(np.float32)
    whole = (
        rebuild.low_rank(base, dtype_name, shape, r, c, scale),
        rebuild.ia3(base, dtype_name, shape, s),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rebuild, "BLOCK_VALUES", 3)  # a row or two at a time
        blocks = (
            rebuild.low_rank(base, dtype_name, shape, r, c, scale),
            rebuild.ia3(base, dtype_name, shape, s),
        )
    assert [w.tobytes() for w in whole] == [b.tobytes() for b in blocks]
    # each multiply-add of the product one fused float32 operation, in order (so numpy's
    # OpenBLAS computes it here), the scale and the sum likewise, then the tensor's dtype
    ct = np.float64 if dtype_name == "float64" else np.float32
    total = np.zeros((rows, cols), dtype=ct)
    for k in range(rank):
        exact = np.multiply.outer(r[:, k].astype(np.float64), c[k].astype(np.float64))
        total = (exact + total).astype(ct)
    if scale != 1.0:
        total = (total.astype(np.float64) * scale).astype(ct)
    old = base.view(kind).reshape(rows, cols).astype(ct).astype(np.float64)
    expected = (old + total).astype(ct).astype(kind)
    assert whole[0].tobytes() == expected.tobytes()
    if ct is np.float32:
        blas = base.view(kind).reshape(rows, cols).astype(ct) + (r @ c) * np.float32(scale)
        assert whole[0].tobytes() == blas.astype(kind).tobytes()
    product = base.view(kind).reshape(shape).astype(ct) * s.astype(ct)
    assert whole[1].tobytes() == product.astype(kind).tobytes()


def test_factored_records_that_do_not_fit_their_tensor_are_refused(tmp_path: Path) -> None:
    from git_theta.manifest import Ia3, LowRank

    store = ObjectStore(tmp_path)
    config = theta_config.load({})
    base = store_versions([words_of("float32", 20, 1)], "float32", store)[0]

    def stored(values: np.ndarray) -> ObjectRef:
        words = values.astype(np.float32).view(np.uint32).reshape(-1)
        return updates.finish(
            updates.start_encode(words, config, "float32"), store, config
        ).objects[0]

    s = stored(np.ones(7))
    r, c = stored(np.ones((4, 2))), stored(np.ones((2, 5)))
    cases = [
        (
            (4, 5),
            Ia3((s,), base.hash, base.storage, "float32", 0, scale_shape=(7,)),
            "does not broadcast",
        ),
        (
            (4, 5),
            LowRank((r, c), base.hash, base.storage, "int32", 0, rank=2),
            "must be floating-point",
        ),
        (
            (20,),
            LowRank((r, c), base.hash, base.storage, "float32", 0, rank=2),
            "fewer than 2 dimensions",
        ),
        (
            (4, 5),
            LowRank((r, c), base.hash, base.storage, "float32", 0, rank=3),
            "expected uint32[12]",
        ),
    ]
    for shape, storage, message in cases:
        record = TensorRecord("float32", shape, base.hash, storage)
        with pytest.raises(
            CorruptObjectError, match=message.replace("[", r"\[").replace("]", r"\]")
        ):
            updates.decode(record, store)
