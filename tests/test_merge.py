"""Branch and merge checkpoints like code: git's merge (and rebase, cherry-pick, revert,
stash) through git-theta's merge driver, with real git; the methods' formulas checked
against numpy in float64."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from git_theta import methods, threeway
from git_theta.errors import UsageError
from git_theta.manifest import Dense, Manifest, TensorRecord
from git_theta.store import ObjectRef
from tests.helpers import Repo, assert_same_object, seeded_state_dict
from tests.lfs_server import LfsServer

N, SIZE = 4, 16


# ----------------------------------------------------------------------------- helpers


def base_state() -> dict[str, Any]:
    return seeded_state_dict(N, SIZE, seed=0)


def with_layer(state: dict[str, Any], index: int, seed: int) -> dict[str, Any]:
    out = dict(state)
    gen = torch.Generator().manual_seed(seed)
    # a small change, as fine-tuning makes: the base plus noise
    out[f"layers.{index}.weight"] = state[f"layers.{index}.weight"] + 0.1 * torch.randn(
        SIZE, SIZE, generator=gen
    )
    return out


def save(repo: Repo, state: Any, name: str = "model.pt") -> None:
    torch.save(state, repo.path / name)


def commit(repo: Repo, state: Any, message: str, name: str = "model.pt") -> str:
    save(repo, state, name)
    return repo.commit_file(name, message)


def load(repo: Repo, name: str = "model.pt") -> Any:
    return torch.load(repo.path / name, weights_only=True)


def oids(repo: Repo, rev_path: str) -> dict[str, str]:
    manifest = json.loads(repo.blob(rev_path))
    return {n: r["storage"]["objects"][0]["oid"] for n, r in manifest["tensors"].items()}


def branches(repo: Repo, ours: Any, theirs: Any, base: Any | None = None) -> None:
    """main: base then ``ours``; branch `other`: base then ``theirs``; on main after."""
    commit(repo, base if base is not None else base_state(), "base")
    repo.git("checkout", "-q", "-b", "other")
    commit(repo, theirs, "theirs")
    repo.git("checkout", "-q", "main")
    commit(repo, ours, "ours")


def merge(repo: Repo, *extra: str, env: dict[str, str] | None = None):
    return subprocess.run(
        ["git", "merge", "--no-edit", *extra, "other"],
        cwd=repo.path,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def assert_within_one_ulp(actual: torch.Tensor, expected: np.ndarray) -> None:
    got = actual.numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    apart = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32).astype(np.int64))
    assert int(apart.max()) <= 1, f"{int(apart.max())} ulps apart"


def as64(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float64)


def ties(base: np.ndarray, xs: list[np.ndarray], density: float, lam: float) -> np.ndarray:
    """TIES-merging, written out for the test with torch's topk."""
    trimmed = []
    for x in xs:
        delta = torch.from_numpy((x - base).reshape(-1))
        keep = max(1, int(density * delta.numel()))
        kept = torch.zeros_like(delta)
        if keep:
            index = torch.topk(delta.abs(), keep).indices
            kept[index] = delta[index]
        trimmed.append(kept.numpy())
    stacked = np.stack(trimmed)
    sign = np.where(stacked.sum(axis=0) >= 0, 1.0, -1.0)
    agree = (np.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(axis=0)
    mean = np.where(count > 0, np.where(agree, stacked, 0).sum(axis=0) / np.maximum(count, 1), 0)
    return base + lam * mean.reshape(base.shape)


# ----------------------------------------------------------------------------- 1: one-sided


def test_changes_to_different_tensors_merge_without_a_prompt(repo: Repo) -> None:
    base = base_state()
    ours, theirs = with_layer(base, 1, 11), with_layer(base, 2, 22)
    commit(repo, base, "base")
    base_oids = oids(repo, "HEAD:model.pt")
    repo.git("checkout", "-q", "-b", "other")
    (repo.path / "theirs.txt").write_text("theirs\n")
    repo.git("add", "theirs.txt")
    commit(repo, theirs, "theirs")
    repo.git("checkout", "-q", "main")
    (repo.path / "ours.txt").write_text("ours\n")
    repo.git("add", "ours.txt")
    commit(repo, ours, "ours")
    before = repo.objects()

    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    assert_same_object(
        load(repo),
        {
            **base,
            **{k: ours[k] for k in ["layers.1.weight"]},
            "layers.2.weight": theirs["layers.2.weight"],
        },
    )
    merged = oids(repo, "HEAD:model.pt")
    for name in ("layers.0.weight", "layers.3.weight"):
        assert merged[name] == base_oids[name]  # untouched records, same objects
    assert merged["layers.1.weight"] == oids(repo, "HEAD^1:model.pt")["layers.1.weight"]
    assert merged["layers.2.weight"] == oids(repo, "HEAD^2:model.pt")["layers.2.weight"]
    assert repo.objects() == before  # no arithmetic, no new object
    assert (repo.path / "ours.txt").exists() and (repo.path / "theirs.txt").exists()
    assert repo.status() == ""


def test_both_sides_making_the_same_change_is_no_conflict(repo: Repo) -> None:
    base = base_state()
    same = with_layer(base, 1, 11)
    branches(repo, {**same, "extra": torch.ones(3)}, {**same, "extra": torch.ones(3)}, base)
    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    assert_same_object(load(repo), {**same, "extra": torch.ones(3)})


# ----------------------------------------------------------------------------- 2: conflicts


def test_a_tensor_changed_on_both_sides_stops_the_merge_with_ours_in_place(repo: Repo) -> None:
    base = base_state()
    ours, theirs = with_layer(base, 1, 11), with_layer(base, 1, 22)
    commit(repo, base, "base")
    repo.git("checkout", "-q", "-b", "other")
    (repo.path / "notes.txt").write_text("theirs\n")
    repo.git("add", "notes.txt")
    commit(repo, theirs, "theirs")
    repo.git("checkout", "-q", "main")
    commit(repo, ours, "ours")

    proc = merge(repo)
    assert proc.returncode == 1
    assert (
        "git-theta: model.pt: changed on both sides, not merged automatically:\n"
        "git-theta:   tensor `layers.1.weight`: changed on both sides\n"
        "git-theta:   to resolve: `git theta resolve model.pt --method M` merges those tensors "
        "(M: ours, theirs, base, average, task-arithmetic, ties) and stages the result; or "
        "`git checkout --ours model.pt` (or `--theirs`) takes one side whole, then "
        "`git add model.pt`\n"
    ) in proc.stderr
    assert_same_object(load(repo), ours)  # our checkpoint, bit-exact, never deleted
    assert repo.git("status", "--porcelain").stdout == "UU model.pt\nA  notes.txt\n"
    assert (repo.path / ".git" / "MERGE_HEAD").is_file()
    repo.git("merge", "--abort")
    assert_same_object(load(repo), ours)
    assert not (repo.path / "notes.txt").exists()
    assert repo.status() == ""


def _expected(method: str, base: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    if method == "ours":
        return ours
    if method == "theirs":
        return theirs
    if method == "base":
        return base
    if method == "average":
        return 0.3 * ours + 0.7 * theirs
    if method == "task-arithmetic":
        return base + 0.8 * ((ours - base) + (theirs - base))
    return ties(base, [ours, theirs], 0.5, 0.8)


@pytest.mark.parametrize("method", ["ours", "theirs", "base", "average", "task-arithmetic", "ties"])
def test_each_method_resolves_a_tensor_changed_on_both_sides(repo: Repo, method: str) -> None:
    base = base_state()
    ours, theirs = with_layer(base, 1, 11), with_layer(base, 1, 22)
    branches(repo, ours, theirs, base)
    repo.git("config", "theta.merge.weight", "0.3")
    repo.git("config", "theta.merge.lambda", "0.8")
    repo.git("config", "theta.merge.density", "0.5")
    before = repo.objects()
    proc = merge(repo, env={"GIT_THETA_MERGE_METHOD": method})
    assert proc.returncode == 0, proc.stderr
    name = "layers.1.weight"
    expected = _expected(method, as64(base[name]), as64(ours[name]), as64(theirs[name]))
    merged = load(repo)
    assert_within_one_ulp(merged[name], expected.astype(np.float32))
    assert_same_object(
        {k: v for k, v in merged.items() if k != name}, {k: v for k, v in ours.items() if k != name}
    )
    new = repo.objects() - before
    assert len(new) == (1 if method in methods.ARITHMETIC else 0)
    assert repo.status() == ""
    assert repo.theta("fsck").returncode == 0


def test_method_from_attribute_and_config_and_resolve_command(repo: Repo) -> None:
    base = base_state()
    ours, theirs = with_layer(base, 1, 11), with_layer(base, 1, 22)
    branches(repo, ours, theirs, base)
    name = "layers.1.weight"
    # the attribute wins over config; the environment over both
    with open(repo.path / ".git" / "info" / "attributes", "w") as f:
        f.write("model.pt theta-merge=theirs\n")
    repo.git("config", "theta.merge.method", "ours")
    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    assert_same_object(load(repo)[name], theirs[name])
    repo.git("reset", "-q", "--hard", "HEAD^1")
    proc = merge(repo, env={"GIT_THETA_MERGE_METHOD": "conflict"})
    assert proc.returncode == 1
    resolved = repo.theta("resolve", "model.pt", "--method", "average", "--weight", "0.25")
    assert resolved.stderr == (
        "git-theta: model.pt: 1 tensors merged by average (weight 0.25); staged\n"
    )
    expected = 0.25 * as64(ours[name]) + 0.75 * as64(theirs[name])
    assert_within_one_ulp(load(repo)[name], expected.astype(np.float32))
    assert repo.git("status", "--porcelain").stdout == "M  model.pt\n"
    repo.git("commit", "-q", "--no-edit")
    assert repo.status() == ""
    assert_within_one_ulp(load(repo)[name], expected.astype(np.float32))


def test_a_bad_method_or_number_is_one_error_and_a_conflict(repo: Repo) -> None:
    base = base_state()
    branches(repo, with_layer(base, 1, 11), with_layer(base, 1, 22), base)
    repo.git("config", "theta.merge.method", "avg")
    proc = merge(repo)
    assert proc.returncode == 1
    assert (
        "git-theta: error: model.pt: unknown merge method `avg` (from theta.merge.method): use "
        "one of conflict, ours, theirs, base, average, task-arithmetic, ties\n"
    ) in proc.stderr
    assert repo.git("status", "--porcelain").stdout == "UU model.pt\n"
    repo.git("merge", "--abort")
    repo.git("config", "theta.merge.method", "average")
    proc = merge(repo, env={"GIT_THETA_MERGE_WEIGHT": "1.5"})
    assert proc.returncode == 1
    assert (
        "git-theta: error: model.pt: merge weight `1.5` (from GIT_THETA_MERGE_WEIGHT) is not "
        "a number from 0 to 1\n"
    ) in proc.stderr
    repo.git("merge", "--abort")
    bad = repo.theta("resolve", "model.pt", "--method", "ties", check=False)
    assert (bad.returncode, bad.stderr) == (
        2,
        "git-theta: error: `model.pt` has no merge conflict to resolve (`git status` lists "
        "conflicted paths)\n",
    )


# ----------------------------------------------------------------------------- 3: never silent


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("delete-vs-edit", "tensor `layers.1.weight`: deleted in ours, changed in theirs"),
        ("both-add", "tensors added on both sides: ours adds `head.a`, theirs adds `head.b`"),
        ("epoch", "value `epoch`: 1 -> 2 in ours, 3 in theirs"),
        (
            "shape",
            "tensor `layers.1.weight`: its dtype or shape changed: base float32[16, 16], "
            "ours float32[8, 16], theirs float32[16, 16]",
        ),
    ],
)
def test_what_no_method_can_decide_is_a_conflict(repo: Repo, case: str, line: str) -> None:
    base = base_state()
    ours, theirs = dict(base), with_layer(base, 1, 22)
    if case == "delete-vs-edit":
        del ours["layers.1.weight"]
    elif case == "both-add":
        ours["head.a"], theirs = torch.ones(2), {**base, "head.b": torch.zeros(2)}
    elif case == "shape":
        ours["layers.1.weight"] = torch.zeros(8, 16)
    wrap = case == "epoch"
    if wrap:
        base, ours, theirs = (
            {"model": base, "epoch": 1},
            {"model": base, "epoch": 2},
            {"model": base, "epoch": 3},
        )
    branches(repo, ours, theirs, base)
    proc = merge(repo, env={"GIT_THETA_MERGE_METHOD": "average"})
    assert proc.returncode == 1
    assert f"git-theta:   {line}\n" in proc.stderr
    assert repo.git("status", "--porcelain").stdout == "UU model.pt\n"
    assert_same_object(load(repo), ours)


def test_both_adding_the_same_tensor_merges(repo: Repo) -> None:
    base = base_state()
    head = torch.arange(6.0)
    ours = {**with_layer(base, 1, 11), "head": head}
    theirs = {**with_layer(base, 2, 22), "head": head.clone()}
    branches(repo, ours, theirs, base)
    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    assert_same_object(load(repo), {**ours, "layers.2.weight": theirs["layers.2.weight"]})


def test_a_manifest_with_conflict_markers_is_left_as_text(repo: Repo) -> None:
    base = base_state()
    branches(repo, with_layer(base, 1, 11), with_layer(base, 1, 22), base)
    repo.git("config", "--remove-section", "merge.theta")  # as where it was never configured
    proc = merge(repo)
    assert proc.returncode == 1
    text = (repo.path / "model.pt").read_text()
    assert "<<<<<<< " in text and '"git_theta"' in text
    assert (
        "git-theta: warning: model.pt holds a manifest with merge conflict markers (merged "
        "where git-theta's merge driver was not configured), left as text: take one side with "
        "`git checkout --ours model.pt` (or `--theirs`), or run `git theta install`, "
        "`git merge --abort` and merge again\n"
    ) in proc.stderr
    repo.git("checkout", "--ours", "model.pt")
    assert_same_object(load(repo), with_layer(base, 1, 11))


# ----------------------------------------------------------------------------- 4: history


def test_rebase_cherry_pick_revert_and_stash_never_lose_the_checkpoint(repo: Repo) -> None:
    base = base_state()
    commit(repo, base, "base")
    repo.git("checkout", "-q", "-b", "other")
    upstream = with_layer(base, 0, 100)
    commit(repo, upstream, "upstream: layer 0")
    repo.git("checkout", "-q", "main")
    states = [with_layer(base, 1, 1)]
    states.append(with_layer(states[-1], 2, 2))
    states.append(with_layer(states[-1], 3, 3))
    for i, state in enumerate(states):
        commit(repo, state, f"main {i}")

    repo.git("rebase", "-q", "other")  # three checkpoint commits onto other tensors
    for i, state in enumerate(states):
        repo.git("checkout", "-q", f"main~{2 - i}")
        assert_same_object(load(repo), {**state, "layers.0.weight": upstream["layers.0.weight"]})
    repo.git("checkout", "-q", "main")

    repo.git("checkout", "-q", "-b", "clash", "other")
    clash = with_layer(upstream, 1, 99)
    commit(repo, clash, "clash: layer 1")
    proc = subprocess.run(["git", "rebase", "main"], cwd=repo.path, capture_output=True, text=True)
    assert proc.returncode != 0  # layer 1 changed on both sides
    assert (repo.path / "model.pt").is_file()
    repo.git("rebase", "--abort")
    assert_same_object(load(repo), clash)

    repo.git("checkout", "-q", "main")
    repo.git("checkout", "-q", "-b", "picked", "other")
    repo.git("cherry-pick", "main~1")  # layer 2's change
    assert_same_object(load(repo), {**upstream, "layers.2.weight": states[1]["layers.2.weight"]})
    repo.git("revert", "--no-edit", "HEAD")
    assert_same_object(load(repo), upstream)

    repo.git("checkout", "-q", "main")
    save(repo, with_layer(states[2], 3, 33))
    repo.git("stash", "-q")
    commit(repo, with_layer(states[2], 3, 44), "layer 3 again")
    proc = subprocess.run(["git", "stash", "pop"], cwd=repo.path, capture_output=True, text=True)
    assert proc.returncode != 0  # both changed layer 3
    assert_same_object(load(repo), with_layer(states[2], 3, 44))  # ours, not deleted
    assert repo.git("stash", "list").stdout.count("stash@") == 1  # the entry is kept


# ----------------------------------------------------------------------------- 5: formats


def test_a_training_checkpoint_merges_and_round_trips(repo: Repo) -> None:
    gen = torch.Generator().manual_seed(5)
    model = torch.nn.Linear(8, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 8, generator=gen))
        model.bias.copy_(torch.randn(4, generator=gen))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8, generator=gen)).sum().backward()
    opt.step()
    base = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}
    ours = {**base, "model": {**base["model"], "weight": base["model"]["weight"] + 1}}
    theirs = {**base, "epoch": 2, "note": "theirs"}
    branches(repo, ours, theirs, base)
    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    expected = {
        "model": ours["model"],
        "optimizer": base["optimizer"],
        "epoch": 2,
        "note": "theirs",
    }
    assert_same_object(torch.load(repo.path / "model.pt", weights_only=True), expected)
    assert repo.status() == ""


def test_a_safetensors_file_merges_and_round_trips(repo: Repo) -> None:
    from safetensors.torch import load_file, save_file

    repo.theta("track", "model.safetensors")
    base = {"a": torch.arange(4.0), "b": torch.ones(3, dtype=torch.bfloat16)}
    ours = {**base, "a": torch.arange(4.0) * 2}
    theirs = {**base, "b": torch.full((3,), 3.0, dtype=torch.bfloat16)}
    path = repo.path / "model.safetensors"
    for message, state in (("base", base), ("theirs", theirs), ("ours", ours)):
        if message == "theirs":
            repo.git("checkout", "-q", "-b", "other")
        if message == "ours":
            repo.git("checkout", "-q", "main")
        save_file(state, str(path), metadata={"step": "1"})
        repo.git("add", ".gitattributes", "model.safetensors")
        repo.git("commit", "-q", "-m", message)
    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    merged = load_file(str(path))
    assert_same_object(dict(sorted(merged.items())), {"a": ours["a"], "b": theirs["b"]})
    assert repo.status() == ""


def test_a_merge_commit_pushes_and_clones(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path
) -> None:
    a, bare, _ = shared
    base = base_state()
    ours, theirs = with_layer(base, 1, 11), with_layer(base, 1, 22)
    commit(a, base, "base")
    a.git("checkout", "-q", "-b", "other")
    commit(a, theirs, "theirs")
    a.git("checkout", "-q", "main")
    commit(a, ours, "ours")
    proc = merge(a, env={"GIT_THETA_MERGE_METHOD": "average"})
    assert proc.returncode == 0, proc.stderr
    expected = load(a)
    a.git("push", "-q", "origin", "main")
    subprocess.run(["git", "clone", "-q", str(bare), str(tmp_path / "b")], check=True)
    b = Repo(tmp_path / "b")
    assert_same_object(load(b), expected)


# ----------------------------------------------------------------------------- units


def test_parse_methods_and_numbers() -> None:
    assert methods.parse("TIES", "0.1", "2", "0.5") == methods.Method("ties", 0.1, 2.0, 0.5)
    assert methods.parse("average") == methods.Method("average")
    with pytest.raises(UsageError, match=r"^merge density `0` \(from x\) is not a number above"):
        methods.parse("ties", density="0", source="x")
    with pytest.raises(UsageError, match=r"^merge lambda `nan` is not a number finite$"):
        methods.parse("ties", lam="nan")


def test_ties_by_hand() -> None:
    base = np.zeros(4)
    ours = np.array([3.0, -1.0, 0.5, 0.0])
    theirs = np.array([-1.0, -2.0, 0.0, 4.0])
    # density 0.5: ours keeps 3 and -1, theirs keeps 4 and -2; signs: +, -, 0, +
    merged = methods.combine(methods.Method("ties", lam=1.0, density=0.5), base, ours, theirs)
    assert merged.tolist() == [3.0, -1.5, 0.0, 4.0]


def _record(hash_byte: str, dtype: str = "float32", shape: tuple[int, ...] = (2,)) -> TensorRecord:
    return TensorRecord(dtype, shape, hash_byte * 64, Dense(ObjectRef(hash_byte * 64, 10)))


def test_plan_per_tensor() -> None:
    fmt = {"name": "safetensors", "header": "h"}
    base = Manifest(fmt, {"a": _record("1"), "b": _record("2"), "i": _record("3", "int32")})
    ours = Manifest(fmt, {"a": _record("4"), "b": _record("2"), "i": _record("5", "int32")})
    theirs = Manifest(fmt, {"a": _record("6"), "b": _record("7"), "i": _record("8", "int32")})
    plan = threeway.plan(base, ours, theirs)
    assert plan.tensors == {"b": _record("7")}
    assert list(plan.both) == ["a"]
    assert plan.conflicts == [
        "tensor `i`: changed on both sides, and a int32 tensor cannot be merged by arithmetic"
    ]


def test_values_of_an_ordered_dict_merge_key_by_key(repo: Repo) -> None:
    from collections import OrderedDict

    weight = torch.ones(2, 2)

    def state(a: int, b: int) -> dict[str, Any]:
        return {"cfg": OrderedDict(a=a, b=b), "w": weight}

    branches(repo, state(10, 2), state(1, 20), state(1, 2))
    proc = merge(repo)
    assert proc.returncode == 0, proc.stderr
    merged = load(repo)
    assert type(merged["cfg"]) is OrderedDict
    assert_same_object(merged, state(10, 20))
    repo.git("reset", "-q", "--hard", "HEAD^1")
    repo.git("checkout", "-q", "other")
    commit(repo, state(1, 30), "theirs again")
    repo.git("checkout", "-q", "main")
    commit(repo, state(10, 40), "ours again")
    proc = merge(repo)
    assert proc.returncode == 1
    assert "git-theta:   value `cfg/b`: 2 -> 40 in ours, 30 in theirs\n" in proc.stderr


def test_ties_keeps_the_largest_change_of_a_small_tensor() -> None:
    base = np.zeros(4)
    ours, theirs = np.array([0.5, 0.1, 0.0, 0.0]), np.array([0.0, 0.2, 0.0, -0.3])
    merged = methods.combine(methods.Method("ties"), base, ours, theirs)  # density 0.2
    assert merged.tolist() == [0.5, 0.0, 0.0, -0.3]


def test_rounding_to_bfloat16_and_float8_is_done_once() -> None:
    import ml_dtypes

    values = np.array([1.38671874999, -1.38671874999, 1 + 2**-4 + 2**-40, np.inf, np.nan])
    words = methods.from_float64(values, "bfloat16", np.dtype("<u2"))
    got = words.view(ml_dtypes.bfloat16).astype(np.float64)
    assert got[:4].tolist() == [1.3828125, -1.3828125, 1.0625, np.inf] and np.isnan(got[4])
    words = methods.from_float64(np.array([1 + 2**-4 + 2**-40]), "float8_e4m3fn", np.dtype("<u1"))
    assert words.view(ml_dtypes.float8_e4m3fn).astype(np.float64).tolist() == [1.125]


def test_a_criss_cross_merge_does_not_drop_a_side(repo: Repo) -> None:
    base = base_state()
    commit(repo, base, "base")
    repo.git("checkout", "-q", "-b", "b")
    x2 = with_layer(base, 1, 2)
    commit(repo, x2, "b: x2")
    repo.git("checkout", "-q", "main")
    x1 = with_layer(base, 1, 1)
    commit(repo, x1, "main: x1")
    repo.git("merge", "-q", "-s", "ours", "--no-edit", "b~0")  # keeps x1
    repo.git("checkout", "-q", "b")
    repo.git("merge", "-q", "-s", "ours", "--no-edit", "main~1")  # keeps x2
    repo.git("checkout", "-q", "main")
    proc = subprocess.run(
        ["git", "merge", "--no-edit", "b"], cwd=repo.path, capture_output=True, text=True
    )
    assert proc.returncode == 1  # x1 against x2: a conflict, not one side silently
    assert repo.git("status", "--porcelain").stdout == "UU model.pt\n"
    assert_same_object(load(repo), x1)


def test_ties_between_tensors_never_lose_a_side(repo: Repo) -> None:
    base = base_state()
    a = "layers.0.weight"
    tied = {**base, "layers.1.weight": base[a].detach()}  # ours ties layer 1 to layer 0
    deleted = {k: v for k, v in base.items() if k != a}  # theirs deletes layer 0
    branches(repo, tied, deleted, base)
    proc = merge(repo)
    assert proc.returncode == 1, proc.stderr
    assert repo.git("status", "--porcelain").stdout == "UU model.pt\n"
    assert_same_object(load(repo), tied)
    repo.git("merge", "--abort")

    repo.git("checkout", "-q", "-b", "tie", "main~1")  # the base
    state = {**base, "layers.1.weight": base[a].detach()}  # shares layer 0's storage
    commit(repo, state, "tied")
    assert json.loads(repo.blob("HEAD:model.pt"))["aliases"] == {"layers.1.weight": a}
    repo.git("checkout", "-q", "-b", "untied")
    commit(repo, {**state, "layers.1.weight": base[a].clone()}, "untied, same values")
    repo.git("checkout", "-q", "tie")
    trained = base[a] + 1
    commit(repo, {**state, a: trained, "layers.1.weight": trained.detach()}, "trained, tied")
    proc = subprocess.run(
        ["git", "merge", "--no-edit", "untied"], cwd=repo.path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "tensor `layers.1.weight`: tied to another tensor on one side" in proc.stderr


def test_the_message_lists_every_tensor_changed_on_both_sides(repo: Repo) -> None:
    base = base_state()
    ours = {"model": with_layer(base, 1, 11), "epoch": 2}
    theirs = {"model": with_layer(base, 1, 22), "epoch": 3}
    branches(repo, ours, theirs, {"model": base, "epoch": 1})
    proc = merge(repo, env={"GIT_THETA_MERGE_METHOD": "average"})
    assert proc.returncode == 1
    assert "git-theta:   tensor `model/layers.1.weight`: changed on both sides\n" in proc.stderr
    assert "git-theta:   value `epoch`: 1 -> 2 in ours, 3 in theirs\n" in proc.stderr


def test_resolve_changes_nothing_when_the_merged_checkpoint_cannot_be_written(
    repo: Repo,
) -> None:
    base = base_state()
    ours = with_layer(base, 1, 11)
    theirs = with_layer(with_layer(base, 1, 22), 3, 33)  # and layer 3, on their side only
    branches(repo, ours, theirs, base)
    assert merge(repo).returncode == 1
    oid = oids(repo, "other:model.pt")["layers.3.weight"]
    store = repo.path / ".git" / "lfs" / "theta" / "objects"
    (store / oid[:2] / oid[2:4] / oid).unlink()  # not local, and no remote to fetch it from
    proc = repo.theta("resolve", "model.pt", "--method", "average", check=False)
    assert proc.returncode == 1
    assert "layers.3.weight" in proc.stderr
    assert repo.git("status", "--porcelain").stdout == "UU model.pt\n"
    assert_same_object(load(repo), ours)
