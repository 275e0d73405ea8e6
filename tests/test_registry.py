"""The model registry: versions as annotated tags, aliases as movable tags, through a remote
and from a URL."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from git_theta import registry
from tests.helpers import Repo, assert_same_object
from tests.lfs_server import LfsServer
from tests.test_remote import clone


def _weights(seed: int) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return OrderedDict(torch.nn.Linear(6, 3).state_dict())


@pytest.mark.timeout(300)
def test_versions_and_aliases_push_clone_and_load_from_a_url(
    shared: tuple[Repo, Path, LfsServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, bare, _ = shared
    first, second = _weights(1), _weights(2)
    torch.save(first, a.path / "model.pt")
    a.commit_file("model.pt", "first")
    out = a.theta("registry", "register", "clf", "v1.0.0").stdout
    assert out.startswith("registered clf v1.0.0: model.pt at ")
    torch.save(second, a.path / "model.pt")
    a.commit_file("model.pt", "second")
    a.theta("registry", "register", "clf", "v1.1.0", "HEAD", "--path", "model.pt")
    refused = a.theta("registry", "register", "clf", "v1.1.0", check=False)
    assert refused.returncode != 0
    assert "model `clf` already has version v1.1.0: register a new version instead" in (
        refused.stderr
    )
    a.theta("registry", "alias", "clf", "champion", "v1.0.0")
    listed = a.theta("registry", "list").stdout.splitlines()
    assert [line.split()[:3] for line in listed] == [
        ["clf", "v1.0.0", "(champion)"],
        ["clf", "v1.1.0", a.git("rev-parse", "HEAD").stdout.strip()[:12]],
    ]
    a.git("push", "-q", "origin", "main")
    a.theta("registry", "push")

    b, _ = clone(bare, tmp_path / "b")
    assert_same_object(first, registry.load("clf", "champion", repo=b.path))
    assert_same_object(second, registry.load("clf", "v1.1.0", repo=b.path))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"file://{bare}"
    assert_same_object(first, registry.load("clf", "champion", repo=url))
    a.theta("registry", "alias", "clf", "champion", "v1.1.0")
    a.theta("registry", "push")
    assert_same_object(second, registry.load("clf", "champion", repo=url))
    with pytest.raises(Exception) as info:
        registry.load("clf", "staging", repo=url)
    assert "model `clf` has no alias `staging`" in str(info.value)
