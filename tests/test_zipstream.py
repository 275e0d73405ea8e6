"""The front-to-back zip writer used to rebuild torch files, ZIP64 paths included."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from git_theta import zipstream
from git_theta.formats import detect
from tests.helpers import assert_same_object


def _write(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    archive = zipstream.ZipStream(out, align=64)
    for name, data in members:
        archive.add(name, data)
    archive.close()
    return out.getvalue()


@pytest.mark.parametrize("limit", [zipstream.ZIP64_LIMIT, 100])
def test_members_read_back_aligned(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", limit)
    members = [("a/data.pkl", b"x" * 10), ("a/data/0", bytes(range(256)) * 3), ("a/e", b"")]
    blob = _write(members)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.testzip() is None
        assert [(i.filename, archive.read(i)) for i in archive.infolist()] == members
        for info in archive.infolist():
            header = blob[info.header_offset : info.header_offset + 30]
            name_len, extra_len = (
                int.from_bytes(header[26:28], "little"),
                int.from_bytes(header[28:30], "little"),
            )
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0


@pytest.mark.parametrize("limit", [zipstream.ZIP64_LIMIT, 64])
def test_rebuilt_torch_file_loads_with_zip64(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, limit: int
) -> None:
    gen = torch.Generator().manual_seed(1)
    original = {"w": torch.randn(40, 30, generator=gen), "b": torch.arange(7), "n": 3}
    src = tmp_path / "in.pt"
    torch.save(original, src)
    fmt = detect(src, "in.pt")
    checkpoint = fmt.read(src, "in.pt")
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", limit)
    out = tmp_path / "out.pt"
    with open(out, "wb") as f:
        fmt.write(checkpoint.format, checkpoint.tensors, checkpoint.aliases, f)
    assert_same_object(torch.load(out, weights_only=True), original)
    assert_same_object(torch.load(out, weights_only=True, mmap=True), original)
