"""Objects and manifests written by earlier versions of git-theta keep checking out
bit-exact: each fixture under tests/fixtures/ is a manifest and its objects as an earlier
version stored them, never regenerated."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import Repo

FIXTURES = Path(__file__).parent / "fixtures"


def _expected(fixture: Path) -> dict[str, torch.Tensor]:
    spec = importlib.util.spec_from_file_location("make", fixture / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tensors: dict[str, torch.Tensor] = module.tensors()
    return tensors


@pytest.mark.parametrize("name", ["schema1-blosc", "schema2-zstd"])
def test_objects_of_earlier_versions_still_check_out_bit_exact(repo: Repo, name: str) -> None:
    fixture = FIXTURES / name
    store = repo.path / ".git" / "lfs" / "theta" / "objects"
    for obj in (fixture / "objects").iterdir():
        dest = store / obj.name[:2] / obj.name[2:4] / obj.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(obj, dest)
    blob = subprocess.run(
        ["git", "hash-object", "-w", str(fixture / "model.pt.manifest")],
        cwd=repo.path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    repo.git("update-index", "--add", "--cacheinfo", f"100644,{blob},model.pt")
    repo.git("commit", "-qm", "an older version's manifest and objects")
    repo.git("checkout", "--", "model.pt")
    back = torch.load(repo.path / "model.pt", weights_only=True)
    expected = _expected(fixture)
    assert list(back) == list(expected)
    for name, tensor in expected.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert repo.status() == ""  # and adding it again gives the same manifest
    repo.git("add", "--renormalize", "model.pt")
    assert repo.blob(":model.pt") == (fixture / "model.pt.manifest").read_bytes()
    assert repo.theta("fsck").returncode == 0
