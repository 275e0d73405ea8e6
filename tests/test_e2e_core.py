"""End-to-end: PyTorch and safetensors checkpoints through real `git` and `git lfs`.

Each test drives git in a temporary repository (the `repo` fixture: git-theta installed in
its local config, `model.pt` tracked) and checks exact results: bit-exact tensors, exact
manifest bytes, exact `git status` output and exit codes, exact object-store contents.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import Repo, assert_same_object, seeded_state_dict

# ------------------------------------------------------------------------------ helpers


def make_checkpoint(seed: int, adam_steps: int = 1, epoch: int = 3, step: int = 1200) -> dict:
    """A whole training checkpoint from a seeded generator: a model state dict with a tied
    pair and tensors of every dtype, a real Adam state dict, and plain values."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(dtype)

    def randint(low: int, high: int, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=gen, dtype=dtype)

    model: OrderedDict[str, torch.Tensor] = OrderedDict()
    model["wte.weight"] = randn(16, 8)
    model["lm_head.weight"] = model["wte.weight"]  # tied: the very same tensor
    model["decoder.weight"] = model["wte.weight"].detach()  # tied: another view of its storage
    model["layers.0.weight"] = randn(8, 8)
    model["layers.0.bias"] = randn(8, dtype=torch.float64)
    model["layers.1.weight"] = randn(8, 8, dtype=torch.float16)
    model["layers.1.bias"] = randn(8, dtype=torch.bfloat16)
    model["fp8.e4m3fn"] = randn(4, 4, dtype=torch.float8_e4m3fn)
    model["fp8.e5m2"] = randn(4, 4, dtype=torch.float8_e5m2)
    model["ints.i8"] = randint(-128, 128, 9, dtype=torch.int8)
    model["ints.i16"] = randint(-(2**15), 2**15, 9, dtype=torch.int16)
    model["ints.i32"] = randint(-(2**31), 2**31 - 1, 9, dtype=torch.int32)
    model["ints.i64"] = randint(-(2**40), 2**40, 9, dtype=torch.int64)
    model["ints.u8"] = randint(0, 256, 9, dtype=torch.uint8)
    model["mask"] = torch.rand(4, 6, generator=gen) > 0.5
    model["rotary"] = torch.randn(6, dtype=torch.complex64, generator=gen)
    model["scale"] = randn()  # 0-d
    model["empty"] = torch.zeros(0, 3)
    model["proj.weight"] = randn(3, 5).t()  # non-contiguous
    assert not model["proj.weight"].is_contiguous()

    weight = torch.nn.Parameter(randn(4, 3))
    bias = torch.nn.Parameter(randn(3))
    optimizer = torch.optim.Adam([weight, bias], lr=1e-4, betas=(0.9, 0.999))
    for _ in range(adam_steps):
        weight.grad = randn(4, 3)
        bias.grad = randn(3)
        optimizer.step()
    return {
        "model": model,
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "lr": 1e-4,
        "name": "run-1",
        "note": None,
        "betas": (0.9, 0.999),
        "extra": [1, 2.5, "x"],
    }


def tensors_of(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in a checkpoint, in order, duplicates included."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, f"{path}/{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors_of(item, f"{path}/{i}" if path else str(i))


def distinct_tensors(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensors git-theta must store: one per storage. A storage that one plain tensor
    uses whole (offset 0, C-order strides, every element) is stored as that tensor; any
    other storage is stored whole and flat, under the name of its first tensor."""
    views: dict[Any, list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors_of(checkpoint):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes()) if storage.nbytes() else name
        views.setdefault(key, []).append((name, t))
    result = {}
    for group in views.values():
        name, first = group[0]
        distinct = {(t.storage_offset(), t.shape, t.stride()) for _, t in group}
        nbytes = first.untyped_storage().nbytes()
        if (
            len(distinct) == 1
            and first.storage_offset() == 0
            and first.is_contiguous()
            and (first.numel() * first.element_size() == nbytes)
        ):
            result[name] = first
        else:
            flat = torch.empty(0, dtype=first.dtype)
            result[name] = flat.set_(first.untyped_storage(), 0, (nbytes // first.element_size(),))
    return result


def check_checkpoint(path: Path, expected: dict) -> None:
    """``path`` loads (weights only) to exactly ``expected``, tied weights sharing storage."""
    loaded = torch.load(path, weights_only=True)
    assert_same_object(expected, loaded)
    model = loaded["model"]
    assert model["lm_head.weight"] is model["wte.weight"]
    assert model["decoder.weight"].data_ptr() == model["wte.weight"].data_ptr()
    assert model["decoder.weight"] is not model["wte.weight"]


def rc(repo: Repo, *args: str) -> int:
    return repo.git(*args, check=False).returncode


def assert_worktree_matches_index(repo: Repo, clean_status: bool) -> None:
    """Work tree == index as git sees it, and re-cleaning every file changes nothing."""
    quiet = repo.git("diff", "--quiet", check=False)
    assert quiet.returncode == 0, (
        f"git diff --quiet exited {quiet.returncode}: {quiet.stderr}\n"
        f"{repo.git('diff', check=False).stdout[:2000]}"
    )
    index = repo.git("ls-files", "-s").stdout
    repo.git("add", "--renormalize", ".")
    assert repo.git("ls-files", "-s").stdout == index
    if clean_status:
        assert repo.status() == ""
        assert rc(repo, "diff", "--cached", "--quiet") == 0


def clean_bytes(repo: Repo, src: Path, *args: str, env: dict[str, str] | None = None) -> bytes:
    """stdout of `git theta clean ARGS < src` (the one-shot clean filter), checked."""
    with open(src, "rb") as stdin:
        proc = subprocess.run(
            ["git", "theta", "clean", *args],
            cwd=repo.path,
            stdin=stdin,
            capture_output=True,
            env={**os.environ, **(env or {})},
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    return proc.stdout


def manifest(repo: Repo, rev_path: str) -> dict[str, Any]:
    return json.loads(repo.blob(rev_path))


def hashes(m: dict[str, Any]) -> dict[str, str]:
    return {name: rec["hash"] for name, rec in m["tensors"].items()}


@dataclass
class Versions:
    repo: Repo
    sha: dict[str, str]  # "v1" -> commit
    checkpoint: dict[str, dict]  # "v1" -> the checkpoint committed
    objects: dict[str, set[str]]  # "v1" -> object store after committing it


@pytest.fixture
def versions(repo: Repo) -> Versions:
    """model.pt committed three times: v1; v2 = one layer changed; v3 = every tensor changed.
    Branches v1, v2, v3 point at them; main is at v3."""
    v1 = make_checkpoint(seed=0)
    v2 = make_checkpoint(seed=0)
    v2["model"]["layers.0.weight"] = torch.randn(8, 8, generator=torch.Generator().manual_seed(99))
    v3 = make_checkpoint(seed=1, adam_steps=2, epoch=4, step=2400)
    result = Versions(repo, {}, {}, {})
    for name, ckpt in (("v1", v1), ("v2", v2), ("v3", v3)):
        torch.save(ckpt, repo.path / "model.pt")
        result.sha[name] = repo.commit_file("model.pt", name)
        result.checkpoint[name] = ckpt
        result.objects[name] = repo.objects()
        repo.git("branch", name)
    return result


# ----------------------------------------------------------------- round trip, three ways


def test_versions_store_only_changes_and_checkout_path_restores_them(
    versions: Versions,
) -> None:
    repo = versions.repo
    m1, m2, m3 = (manifest(repo, f"{versions.sha[v]}:model.pt") for v in ("v1", "v2", "v3"))
    h1, h2, h3 = hashes(m1), hashes(m2), hashes(m3)
    assert list(h1) == list(h2) == list(h3)
    assert {n for n in h1 if h1[n] != h2[n]} == {"model/layers.0.weight"}
    assert {n for n in h1 if h1[n] == h3[n]} == {"model/empty"}  # cannot change: no elements
    assert {n for n in h2 if h2[n] == h3[n]} == {"model/empty"}
    for m in (m1, m2, m3):
        assert m["aliases"] == {"model/decoder.weight": "model/wte.weight"}
    # v2 added exactly the object of the changed layer, and it is the one v2 records
    new = versions.objects["v2"] - versions.objects["v1"]
    changed = m2["tensors"]["model/layers.0.weight"]["storage"]["objects"]
    assert new == {changed[0]["oid"]}
    # v3's manifest needs only objects that are now in the store, and git-theta's objects only
    needed = {o["oid"] for r in m3["tensors"].values() for o in r["storage"]["objects"]}
    assert needed <= versions.objects["v3"]
    assert versions.objects["v3"] == versions.objects["v2"] | needed

    # `git checkout REV -- model.pt` rebuilds each version exactly
    for name in ("v1", "v2", "v3"):
        repo.git("checkout", versions.sha[name], "--", "model.pt")
        check_checkpoint(repo.path / "model.pt", versions.checkpoint[name])
        assert (
            repo.git("ls-files", "-s", "model.pt").stdout.split()[1]
            == repo.git("rev-parse", f"{versions.sha[name]}:model.pt").stdout.strip()
        )
        assert_worktree_matches_index(repo, clean_status=name == "v3")


def test_branch_switch_restores_every_version(versions: Versions) -> None:
    repo = versions.repo
    for name in ("v1", "v2", "v3"):
        repo.git("switch", "-q", name)
        check_checkpoint(repo.path / "model.pt", versions.checkpoint[name])
        assert repo.status() == ""
        assert_worktree_matches_index(repo, clean_status=True)


def test_stash_and_pop_restore_every_version(versions: Versions) -> None:
    repo = versions.repo
    for head, change in (("v1", "v2"), ("v2", "v3"), ("v3", "v1")):
        repo.git("switch", "-q", head)
        torch.save(versions.checkpoint[change], repo.path / "model.pt")

        repo.git("stash", "-q")
        check_checkpoint(repo.path / "model.pt", versions.checkpoint[head])
        assert repo.status() == ""
        assert_worktree_matches_index(repo, clean_status=True)
        stashed = repo.blob("stash@{0}:model.pt")
        # the stash holds the very manifest the commit of that checkpoint holds
        assert stashed == repo.blob(f"{versions.sha[change]}:model.pt")

        repo.git("stash", "pop", "-q")
        check_checkpoint(repo.path / "model.pt", versions.checkpoint[change])
        assert repo.status() == " M model.pt\n"
        repo.git("add", "model.pt")
        assert repo.blob(":model.pt") == stashed
        assert rc(repo, "diff", "--quiet") == 0
        assert repo.status() == "M  model.pt\n"

        repo.git("reset", "-q", "--hard")
        check_checkpoint(repo.path / "model.pt", versions.checkpoint[head])
    assert repo.status() == ""
    assert repo.git("stash", "list").stdout == ""


# ----------------------------------------------------------- manifest: stored only changes


def test_manifest_is_deterministic_readable_json(repo: Repo) -> None:
    ckpt = make_checkpoint(seed=0)
    path = repo.path / "model.pt"
    torch.save(ckpt, path)
    repo.commit_file("model.pt", "v1")

    shown = repo.git("show", "HEAD:model.pt").stdout
    assert shown.startswith("{")
    assert shown.endswith("}\n") and not shown.endswith("\n\n")
    value = json.loads(shown)
    assert value["git_theta"] == 3
    assert value["format"]["name"] == "pytorch"
    assert all(len(r["blake3"]) == 64 != len(set(r["blake3"])) for r in value["tensors"].values())
    expected = distinct_tensors(ckpt)
    assert {n: (r["dtype"], r["shape"]) for n, r in value["tensors"].items()} == {
        f"{n}": (str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in expected.items()
    }
    assert len({r["dtype"] for r in value["tensors"].values()}) == 13  # every dtype present

    # the same checkpoint cleaned again and again: the same bytes, with or without the
    # previous manifest to reuse, on one thread or two
    indexed = repo.blob(":model.pt")
    assert indexed == shown.encode()
    first = clean_bytes(repo, path, "model.pt")
    assert first == indexed
    assert clean_bytes(repo, path, "model.pt") == first
    assert clean_bytes(repo, path) == first
    assert clean_bytes(repo, path, env={"GIT_THETA_THREADS": "1"}) == first

    # the checkpoint git-theta rebuilds cleans to the same manifest too
    path.unlink()
    repo.git("checkout", "--", "model.pt")
    check_checkpoint(path, ckpt)
    assert clean_bytes(repo, path, "model.pt") == first
    assert_worktree_matches_index(repo, clean_status=True)


# ------------------------------------------------------------------------ exactness, size


def test_one_ulp_change_is_stored_and_restored(repo: Repo) -> None:
    before = seeded_state_dict(n=4, size=16, seed=7)
    after = {k: v.clone() for k, v in before.items()}
    x = after["layers.2.weight"]
    x[3, 5] = torch.nextafter(x[3, 5], torch.tensor(float("inf")))
    assert x.view(torch.int32)[3, 5] - before["layers.2.weight"].view(torch.int32)[3, 5] in (-1, 1)
    assert not torch.equal(x, before["layers.2.weight"])

    path = repo.path / "model.pt"
    torch.save(before, path)
    v1 = repo.commit_file("model.pt", "v1")
    objects = repo.objects()
    torch.save(after, path)
    assert repo.status() == " M model.pt\n"
    v2 = repo.commit_file("model.pt", "v2: one ulp")

    h1, h2 = hashes(manifest(repo, f"{v1}:model.pt")), hashes(manifest(repo, f"{v2}:model.pt"))
    assert {n for n in h1 if h1[n] != h2[n]} == {"layers.2.weight"}
    assert len(repo.objects() - objects) == 1

    for rev, expected in ((v1, before), (v2, after)):
        repo.git("checkout", rev, "--", "model.pt")
        assert_same_object(expected, torch.load(path, weights_only=True))
        assert_worktree_matches_index(repo, clean_status=rev == v2)


def test_store_grows_by_the_one_changed_tensor(repo: Repo) -> None:
    gen = torch.Generator().manual_seed(3)
    state = {f"blocks.{i}.weight": torch.randn(64, 64, generator=gen) for i in range(100)}
    state["big.weight"] = torch.randn(256, 256, generator=gen)
    path = repo.path / "model.pt"
    torch.save(state, path)
    v1 = repo.commit_file("model.pt", "v1")
    old_big = manifest(repo, f"{v1}:model.pt")["tensors"]["big.weight"]["storage"]["objects"]
    objects, size = repo.objects(), repo.store_bytes()
    assert len(objects) == 101

    state["big.weight"] = torch.randn(256, 256, generator=gen)
    torch.save(state, path)
    v2 = repo.commit_file("model.pt", "v2")

    new = repo.objects() - objects
    assert len(new) == 1
    (oid,) = new
    new_size = (
        (repo.path / ".git" / "lfs" / "theta" / "objects" / oid[:2] / oid[2:4] / oid).stat().st_size
    )
    growth = repo.store_bytes() - size
    assert 0.95 * new_size <= growth <= 1.05 * new_size
    assert 0.95 * old_big[0]["size"] <= growth <= 1.05 * old_big[0]["size"]
    assert manifest(repo, f"{v2}:model.pt")["tensors"]["big.weight"]["storage"]["objects"] == [
        {"oid": oid, "size": new_size}
    ]
    assert growth < 0.2 * size  # nowhere near a second copy of the checkpoint


def test_changed_tensor_cleans_the_same_with_or_without_a_previous_manifest(repo: Repo) -> None:
    # with the index's manifest, a tensor of a known shape is hashed before it is compressed;
    # without one, compressed while it is hashed: the same manifest and objects either way,
    # for a tensor of several 1 MiB chunks, on one thread or two
    gen = torch.Generator().manual_seed(11)
    state = {"big.weight": torch.randn(700, 600, generator=gen), "b": torch.randn(7, generator=gen)}
    path = repo.path / "model.pt"
    torch.save(state, path)
    repo.commit_file("model.pt", "v1")
    state["big.weight"] = torch.randn(700, 600, generator=gen)
    torch.save(state, path)
    with_previous = clean_bytes(repo, path, "model.pt")
    assert manifest_hashes(with_previous)["b"] == manifest_hashes(repo.blob(":model.pt"))["b"]
    assert (
        manifest_hashes(with_previous)["big.weight"]
        != (manifest_hashes(repo.blob(":model.pt"))["big.weight"])
    )
    assert clean_bytes(repo, path) == with_previous
    assert clean_bytes(repo, path, "model.pt", env={"GIT_THETA_THREADS": "1"}) == with_previous
    assert clean_bytes(repo, path, env={"GIT_THETA_THREADS": "1"}) == with_previous
    repo.git("add", "model.pt")
    assert repo.blob(":model.pt") == with_previous


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_objects_and_spool_files_go_under_lfs_storage(
    repo: Repo, tmp_path: Path, where: str
) -> None:
    # git-lfs's `lfs.storage` (relative to the git directory, or absolute) moves the store
    storage = tmp_path / "elsewhere" if where == "absolute" else repo.path / ".git" / "custom"
    repo.git("config", "lfs.storage", str(storage) if where == "absolute" else "custom")
    state = seeded_state_dict(n=3, size=16, seed=4)
    path = repo.path / "model.pt"
    torch.save(state, path)
    repo.commit_file("model.pt", "v1")
    oids = {
        o["oid"]
        for r in manifest(repo, "HEAD:model.pt")["tensors"].values()
        for o in r["storage"]["objects"]
    }
    stored = {p.name for p in (storage / "theta" / "objects").rglob("*") if p.is_file()}
    assert stored == oids and len(oids) == 3
    assert not (repo.path / ".git" / "lfs" / "theta" / "objects").exists()
    assert [p.name for p in (storage / "tmp").iterdir()] == []  # spooled input is gone
    path.unlink()
    repo.git("checkout", "--", "model.pt")
    assert_same_object(state, torch.load(path, weights_only=True))
    assert repo.status() == ""


def manifest_hashes(data: bytes) -> dict[str, str]:
    return {name: rec["hash"] for name, rec in json.loads(data)["tensors"].items()}


# ----------------------------------------------------------------------------- safetensors


def test_safetensors_old_version_is_byte_identical(repo: Repo) -> None:
    from safetensors.torch import save_file

    repo.theta("track", "model.safetensors")
    repo.git("add", ".gitattributes")
    repo.git("commit", "-q", "-m", "track model.safetensors")

    gen = torch.Generator().manual_seed(11)
    tensors = {
        "embed.weight": torch.randn(12, 8, generator=gen),
        "norm.weight": torch.randn(8, generator=gen).to(torch.bfloat16),
        "attn.weight": torch.randn(8, 8, generator=gen).to(torch.float16),
        "head.weight": torch.randn(8, 4, generator=gen).to(torch.float64),
        "fp8.weight": torch.randn(4, 4, generator=gen).to(torch.float8_e4m3fn),
        "positions": torch.randint(0, 2**40, (7,), generator=gen, dtype=torch.int64),
        "bytes": torch.randint(0, 256, (5,), generator=gen, dtype=torch.uint8),
        "mask": torch.rand(3, 3, generator=gen) > 0.5,
    }
    path = repo.path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "k": "v"})
    original = path.read_bytes()
    v1 = repo.commit_file("model.safetensors", "v1")
    assert manifest(repo, f"{v1}:model.safetensors")["format"]["name"] == "safetensors"

    tensors["norm.weight"] = torch.randn(8, generator=gen).to(torch.bfloat16)
    save_file(tensors, str(path), metadata={"format": "pt", "k": "v"})
    modified = path.read_bytes()
    assert modified != original
    v2 = repo.commit_file("model.safetensors", "v2")

    for rev, expected in ((v1, original), (v2, modified), (v1, original)):
        repo.git("checkout", rev, "--", "model.safetensors")
        assert path.read_bytes() == expected
        assert_worktree_matches_index(repo, clean_status=rev == v2)
    path.unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert path.read_bytes() == original


def _imported_by_the_filter(repo: Repo, *git_args: str) -> set[str]:
    """Top-level names of the modules git-theta's filter process imports while git runs
    ``git_args`` (the filter started under ``python -X importtime``)."""
    process = f"'{sys.executable}' -X importtime -m git_theta filter-process"
    proc = repo.git("-c", f"filter.theta.process={process}", *git_args)
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_checkout_decodes_without_numpy_or_tensorstore(repo: Repo, name: str) -> None:
    """Checking a PyTorch or safetensors file out decodes, verifies and writes every tensor
    without importing numpy or tensorstore (numpy alone takes 50-60 ms of each filter's
    start), and the file comes back byte for byte: every dtype, an empty tensor, a 0-d
    one, tied and non-contiguous ones."""
    path = repo.path / name
    if name == "model.pt":
        torch.save(make_checkpoint(seed=5), path)
    else:
        from safetensors.torch import save_file

        repo.theta("track", name)
        gen = torch.Generator().manual_seed(5)
        tensors = {
            f"t.{dtype}": torch.randn(7, 5, generator=gen).to(dtype)
            for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
        }
        tensors["ids"] = torch.randint(0, 2**40, (9,), generator=gen, dtype=torch.int64)
        tensors["empty"] = torch.zeros(0, 4)
        save_file(tensors, str(path))
    original = path.read_bytes()
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "v1")
    path.unlink()

    imported = _imported_by_the_filter(repo, "checkout", "--", name)
    assert "git_theta" in imported  # the filter ran, under -X importtime
    # nor hashlib: the checkout verifies by BLAKE3, and objects it wrote are known sound
    assert {"numpy", "tensorstore", "blosc", "hashlib"} & imported == set()
    assert path.read_bytes() == original
    assert repo.status() == ""


# ------------------------------------------------------------------------------- ls-files


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


def test_ls_files_lists_the_checkpoint(repo: Repo) -> None:
    ckpt = make_checkpoint(seed=0)
    torch.save(ckpt, repo.path / "model.pt")
    repo.commit_file("model.pt", "v1")
    stored = distinct_tensors(ckpt)
    count = len(stored)
    assert count == 17 + 6  # model tensors without the tied twins, and Adam's 3 per parameter
    logical = sum(t.numel() * t.element_size() for t in stored.values())
    proc = repo.theta("ls-files")
    assert proc.stderr == ""
    line = f"{count:>8} {_human(logical):>10} {_human(repo.store_bytes()):>10}  model.pt"
    assert proc.stdout == line + "\n"


def test_progress_on_a_terminal_only(repo: Repo) -> None:
    from tests.helpers import on_a_terminal

    torch.save(make_checkpoint(seed=3), repo.path / "model.pt")
    code, shown = on_a_terminal(["git", "add", "model.pt"], repo.path, "stderr")
    assert code == 0
    final = shown.replace("\r\n", "\n").split("\r")[-1]
    assert re.fullmatch(
        r"git-theta: storing model\.pt: 100% \((\d+)/\1, [\d.]+ KiB/[\d.]+ KiB, [\d.]+ \w+/s\)"
        r"\x1b\[K\n",
        final,
    ), shown
    repo.git("commit", "-qm", "v1")
    (repo.path / "model.pt").unlink()
    code, shown = on_a_terminal(["git", "checkout", "--", "model.pt"], repo.path, "stderr")
    assert code == 0 and "git-theta: rebuilding model.pt: 100% (" in shown, shown
    code, shown = on_a_terminal(["git", "theta", "gc"], repo.path, "stderr")
    assert code == 0 and "git-theta: checking objects: 100% (" in shown, shown
    # not on a terminal: nothing
    (repo.path / "model.pt").unlink()
    proc = repo.git("checkout", "--", "model.pt")
    assert proc.stderr == ""
