"""Format detection asks every format, built-in and plugin, whether it claims a file; a
third-party format plugs in through the ``git_theta.formats`` entry point."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from git_theta import formats
from git_theta.errors import NotACheckpointError

from .helpers import Repo

# a tiny format: b"EXAMPLE1", a little-endian uint32 count, then that many float32 values
PLUGIN = """
import numpy as np
from git_theta.formats import Checkpoint, TensorData

MAGIC = b"EXAMPLE1"


class ExampleFormat:
    name = "example"

    def sniff(self, head, size):
        return head[:8] == MAGIC

    def read(self, path, display_name):
        data = path.read_bytes()
        count = int.from_bytes(data[8:12], "little")
        words = np.frombuffer(data, dtype="<u4", count=count, offset=12)
        return Checkpoint({"name": self.name}, {"values": TensorData("float32", (count,), lambda: words)})

    def write_order(self, fmt, tensors, aliases):
        return ["values"]

    def write(self, fmt, tensors, aliases, out):
        values = tensors["values"]
        out.write(MAGIC + values.shape[0].to_bytes(4, "little"))
        out.write(values.load().tobytes())
"""

GREEDY = """
class GreedyFormat:
    name = "greedy"

    def sniff(self, head, size):
        return True  # claims every file
"""


def _install_plugin(site: Path, dist: str, module: str, source: str, entry: str) -> None:
    """A distribution as pip leaves it (module + dist-info with its entry point) in ``site``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[git_theta.formats]\n{entry}\n")


def _example_file(path: Path, values: np.ndarray) -> None:
    path.write_bytes(b"EXAMPLE1" + values.size.to_bytes(4, "little") + values.tobytes())


def test_a_plain_zip_and_an_npz_are_not_pytorch(tmp_path: Path) -> None:
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.arange(3))
    assert formats.detect(npz, npz.name).name == "numpy"
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(NotACheckpointError) as info:
        formats.detect(plain, plain.name)
    assert (
        info.value.reason
        == "its content is not in any known format (safetensors, pytorch, numpy, gguf, flax)"
    )
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "w.safetensors"))
    assert formats.detect(tmp_path / "w.safetensors", "w.safetensors").name == "safetensors"
    buf = io.BytesIO()
    import torch

    torch.save({"w": torch.ones(2)}, buf)
    (tmp_path / "w.pt").write_bytes(buf.getvalue())
    assert formats.detect(tmp_path / "w.pt", "w.pt").name == "pytorch"
    (tmp_path / "cut.pt").write_bytes(buf.getvalue()[:20])  # cut short: claimed, refused
    assert formats.detect(tmp_path / "cut.pt", "cut.pt").name == "pytorch"


@pytest.mark.timeout(300)
def test_a_plugin_format_round_trips_and_an_ambiguous_claim_names_the_candidates(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(
        site, "example_format", "example_format", PLUGIN, "example = example_format:ExampleFormat"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    repo = Repo.init(tmp_path / "repo")

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["git", *args], cwd=repo.path, env=env, capture_output=True, text=True
        )
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    git("theta", "install", "--local")
    git("theta", "track", "*.ex")
    values = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    _example_file(repo.path / "w.ex", values)
    original = (repo.path / "w.ex").read_bytes()
    git("add", "-A")
    git("commit", "-qm", "example checkpoint")
    assert b'"name": "example"' in repo.blob("HEAD:w.ex")
    (repo.path / "w.ex").unlink()
    git("checkout", "--", "w.ex")
    assert (repo.path / "w.ex").read_bytes() == original
    assert git("status", "--porcelain").stdout == ""

    # a second plugin that claims every file: detection names both and stages nothing
    _install_plugin(
        site, "greedy_format", "greedy_format", GREEDY, "greedy = greedy_format:GreedyFormat"
    )
    values[0] += 1
    _example_file(repo.path / "w.ex", values)
    proc = git("add", "w.ex", check=False)
    assert proc.returncode != 0
    assert (
        "git-theta: error: w.ex: not a checkpoint git-theta can read: its content is claimed by "
        "several formats (example, greedy): uninstall the format plugin that should not claim it"
        in proc.stderr
    )

    # a plugin that cannot be loaded is named, with the fix
    (site / "greedy_format.py").write_text("raise RuntimeError('half installed')\n")
    proc = git("add", "w.ex", check=False)
    assert proc.returncode != 0
    assert (
        "checkpoint format plugin `greedy` (greedy_format:GreedyFormat) cannot be loaded "
        "(RuntimeError: half installed): fix or uninstall it" in proc.stderr
    )


def test_a_tracked_folder_may_hold_any_file(tmp_path: Path) -> None:
    """`checkpoints/**` over a .pt, a config.json, a train.log and a binary tokenizer model:
    git add -A succeeds, text stays text, the rest is stored whole, everything comes back
    byte-identical, and one tensor changed in the .pt stores one object."""
    import torch

    repo = Repo.init(tmp_path / "repo")
    repo.theta("install", "--local")
    repo.theta("track", "checkpoints/**")
    folder = repo.path / "checkpoints"
    folder.mkdir()
    state = {
        f"w{i}": torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)
    }
    torch.save(state, folder / "model.pt")
    (folder / "config.json").write_text('{"hidden": 64, "layers": 4}\n')
    (folder / "train.log").write_text(
        "".join(f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(500))
    )
    tokenizer = np.random.default_rng(0).bytes(300_000) + b"\0"  # binary: stored whole
    (folder / "tokenizer.model").write_bytes(tokenizer)
    (folder / "empty.txt").write_bytes(b"")
    originals = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = repo.git("add", "-A")
    notes = sorted(line for line in proc.stderr.splitlines() if line.startswith("git-theta:"))
    assert notes == [
        "git-theta: checkpoints/config.json is in no checkpoint format: kept in git as text",
        "git-theta: checkpoints/empty.txt is in no checkpoint format: kept in git as text",
        "git-theta: checkpoints/tokenizer.model is in no checkpoint format: stored whole, as one object",
        "git-theta: checkpoints/train.log is in no checkpoint format: kept in git as text",
    ]
    repo.git("commit", "-qm", "a run's folder")
    assert repo.blob("HEAD:checkpoints/train.log") == originals["train.log"]  # text in git
    assert b'"name": "file"' in repo.blob("HEAD:checkpoints/tokenizer.model")
    listed = repo.theta("ls-files").stdout.splitlines()
    text = f"{'-':>8} {'-':>10} {'-':>10}"
    assert (
        f"{text}  checkpoints/train.log  (text in no checkpoint format, kept in git as it is)"
        in listed
    )
    assert [ln.split()[0] for ln in listed if ln.endswith("checkpoints/tokenizer.model")] == ["1"]
    for path in folder.iterdir():
        path.unlink()
    repo.git("checkout", "--", "checkpoints")
    back = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert back == originals  # every file, the .pt included, byte for byte
    assert repo.status() == ""

    before = repo.objects()
    state["w2"] = state["w2"] + 1
    torch.save(state, folder / "model.pt")
    repo.git("add", "-A")
    assert len(repo.objects() - before) == 1


@pytest.mark.timeout(120)
def test_a_file_too_big_to_store_whole_is_refused_with_the_fix(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "repo")
    repo.theta("install", "--local")
    repo.theta("track", "*.bin")
    with open(repo.path / "big.bin", "wb") as f:
        f.truncate(300 << 20)  # 300 MiB of zeros (sparse on disk): binary
    # the filter's budget is half its address space: 1 GiB here, a quarter of which is 256 MiB
    limited = ["prlimit", f"--as={2 << 30}", "git", "add", "big.bin"]
    proc = subprocess.run(limited, cwd=repo.path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert (
        "git-theta: error: big.bin: not a checkpoint git-theta can read: it is in no "
        in proc.stderr
    )
    assert "too big to store whole here: track it with `git lfs track` instead" in proc.stderr
