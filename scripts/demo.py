"""The main job of git-theta, end to end, in a temporary repository.

A seeded GPT-2-shaped checkpoint is tracked and committed; one layer is fine-tuned and
committed; the first version is checked out again and checked bit for bit; and the space
the object store uses is compared with what storing each version whole would cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def sh(*args: str, cwd: Path) -> str:
    print("$", " ".join(args), flush=True)
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.stderr.strip():
        print("  " + proc.stderr.strip().replace("\n", "\n  "), flush=True)
    if proc.returncode:
        sys.exit(f"demo: `{' '.join(args)}` failed with exit code {proc.returncode}")
    return proc.stdout


def gpt2_like(layers: int, width: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {"wte.weight": torch.randn(vocab, width, generator=gen)}
    sd["wpe.weight"] = torch.randn(1024, width, generator=gen)
    for i in range(layers):
        p = f"h.{i}."
        sd[p + "ln_1.weight"] = torch.ones(width)
        sd[p + "attn.c_attn.weight"] = torch.randn(width, 3 * width, generator=gen)
        sd[p + "attn.c_proj.weight"] = torch.randn(width, width, generator=gen)
        sd[p + "mlp.c_fc.weight"] = torch.randn(width, 4 * width, generator=gen)
        sd[p + "mlp.c_proj.weight"] = torch.randn(4 * width, width, generator=gen)
    sd["lm_head.weight"] = sd["wte.weight"]  # tied, as in GPT-2
    return sd


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="git-theta-demo-") as tmp:
        repo = Path(tmp)
        env_name = {
            "GIT_AUTHOR_NAME": "demo",
            "GIT_AUTHOR_EMAIL": "demo@example.com",
            "GIT_COMMITTER_NAME": "demo",
            "GIT_COMMITTER_EMAIL": "demo@example.com",
        }
        os.environ.update(env_name)
        sh("git", "init", "-q", "-b", "main", cwd=repo)
        sh("git", "theta", "install", "--local", cwd=repo)
        v1 = gpt2_like(args.layers, args.width, 8192)
        torch.save(v1, repo / "model.pt")
        size = (repo / "model.pt").stat().st_size
        print(f"# model.pt: {len(v1)} tensors, {size / 2**20:.1f} MiB", flush=True)
        sh("git", "theta", "track", "model.pt", cwd=repo)
        sh("git", "add", ".gitattributes", "model.pt", cwd=repo)
        sh("git", "commit", "-q", "-m", "initial checkpoint", cwd=repo)
        after_v1 = du(repo / ".git" / "lfs" / "theta" / "objects")

        v2 = {k: v.clone() for k, v in v1.items()}
        v2["lm_head.weight"] = v2["wte.weight"]
        v2["h.2.mlp.c_fc.weight"] += 0.01  # "fine-tune" one layer
        torch.save(v2, repo / "model.pt")
        sh("git", "add", "model.pt", cwd=repo)
        sh("git", "commit", "-q", "-m", "fine-tune layer 2", cwd=repo)
        after_v2 = du(repo / ".git" / "lfs" / "theta" / "objects")
        print(sh("git", "theta", "ls-files", cwd=repo), end="")

        sh("git", "checkout", "HEAD~1", "--", "model.pt", cwd=repo)
        old = torch.load(repo / "model.pt", weights_only=True)
        ok_old = same(old, v1) and old["lm_head.weight"].data_ptr() == old["wte.weight"].data_ptr()
        sh("git", "checkout", "HEAD", "--", "model.pt", cwd=repo)
        ok_new = same(torch.load(repo / "model.pt", weights_only=True), v2)
        status = sh("git", "status", "--porcelain", cwd=repo)

        changed = v2["h.2.mlp.c_fc.weight"].numel() * 4
        print(f"# version 1 checked out again bit-exact (tied weights shared): {ok_old}")
        print(f"# version 2 checked out again bit-exact: {ok_new}")
        print(f"# git status clean after checkout: {status == ''}")
        print(f"# checkpoint size:             {size / 2**20:8.1f} MiB")
        print(f"# object store after commit 1: {after_v1 / 2**20:8.1f} MiB")
        print(
            f"# object store after commit 2: {after_v2 / 2**20:8.1f} MiB "
            f"(+{(after_v2 - after_v1) / 2**20:.1f} MiB for a {changed / 2**20:.1f} MiB layer)"
        )
        print(f"# storing both versions whole: {2 * size / 2**20:8.1f} MiB")
        if not (ok_old and ok_new and status == ""):
            sys.exit("demo: FAILED")


if __name__ == "__main__":
    main()
