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
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("readme.txt", "hello")
    for path in (npz, plain):
        with pytest.raises(NotACheckpointError) as info:
            formats.detect(path, path.name)
        assert info.value.reason == "its content is not in any known format (safetensors, pytorch)"
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
