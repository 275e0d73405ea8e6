"""NumPy .npy and .npz files through git: byte-identical back, one tensor changed stores one
object, broken files refused in one line. Real git and git-lfs in temporary repositories."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from git_theta import formats
from git_theta.errors import NotACheckpointError, UnsupportedError
from tests.helpers import Repo


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _unseekable_npz(path: Path) -> None:
    """An .npz written to a stream that cannot seek: zipfile then uses data descriptors,
    a layout git-theta does not rebuild (the arrays come back, in np.savez's layout)."""

    class Stream(io.RawIOBase):
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.chunks.append(bytes(data))
            return len(data)

    stream = Stream()
    with zipfile.ZipFile(stream, "w") as archive:  # type: ignore[arg-type]
        for name, value in (("a", np.arange(10.0)), ("b", np.ones((2, 2), np.int32))):
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, value)
    path.write_bytes(b"".join(stream.chunks))


FILES: dict[str, Callable[[Path], None]] = {
    "float32.npy": lambda p: np.save(p, _rng().standard_normal((64, 32)).astype(np.float32)),
    "fortran.npy": lambda p: np.save(p, np.asfortranarray(_rng().standard_normal((5, 7)))),
    "big-endian.npy": lambda p: np.save(p, np.arange(12, dtype=">i4").reshape(3, 4)),
    "complex.npy": lambda p: np.save(p, (_rng().standard_normal(9) * 1j).astype(">c16")),
    "strings.npy": lambda p: np.save(p, np.array(["tokenizer", "merges"])),
    "records.npy": lambda p: np.save(p, np.zeros(3, dtype=[("id", "<i8"), ("score", "<f4")])),
    "scalar.npy": lambda p: np.save(p, np.float16(2.5)),
    "savez.npz": lambda p: np.savez(
        p, w=_rng().standard_normal((40, 8)).astype(np.float32), b=np.ones(8), mask=np.eye(3) > 0
    ),
    "compressed.npz": lambda p: np.savez_compressed(
        p, w=_rng().standard_normal((40, 8)).astype(np.float32), ids=np.arange(100, dtype=np.int64)
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", FILES)
def test_numpy_files_come_back_byte_identical(repo: Repo, name: str) -> None:
    repo.theta("track", "*.npy", "*.npz")
    path = repo.path / name
    FILES[name](path)
    written = _sha256(path)
    repo.git("add", ".gitattributes", name)
    repo.git("commit", "-q", "-m", name)
    assert json.loads(repo.blob(f"HEAD:{name}"))["format"]["name"] == "numpy"
    path.unlink()
    repo.git("checkout", "--", name)
    assert _sha256(path) == written
    assert repo.status() == ""


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_one_array_changed_in_an_npz_stores_one_object(repo: Repo, save: Callable) -> None:
    repo.theta("track", "*.npz")
    path = repo.path / "weights.npz"
    arrays = {
        f"layer{i}": _rng().standard_normal((32, 32)).astype(np.float32) + i for i in range(4)
    }
    save(path, **arrays)
    repo.git("add", ".gitattributes", "weights.npz")
    repo.git("commit", "-q", "-m", "v1")
    v1 = path.read_bytes()
    before = repo.objects()
    arrays["layer2"] = arrays["layer2"] * 3
    save(path, **arrays)
    v2 = path.read_bytes()
    repo.commit_file("weights.npz", "v2")
    assert len(repo.objects() - before) == 1
    for rev, expected in (("HEAD~1", v1), ("HEAD", v2)):
        repo.git("checkout", "-q", rev, "--", "weights.npz")
        assert path.read_bytes() == expected, rev


def test_an_npz_in_another_zip_layout_comes_back_with_the_same_arrays(repo: Repo) -> None:
    repo.theta("track", "*.npz")
    path = repo.path / "stream.npz"
    _unseekable_npz(path)
    original = np.load(path)
    expected = {k: original[k] for k in original.files}
    repo.git("add", ".gitattributes", "stream.npz")
    repo.git("commit", "-q", "-m", "v1")
    path.unlink()
    repo.git("checkout", "--", "stream.npz")
    back = np.load(path)
    assert back.files == list(expected)
    for key, value in expected.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes()
    assert repo.status() == ""  # the rebuilt file cleans to the committed manifest


def test_detection_and_refusals(tmp_path: Path) -> None:
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(100.0))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(npy.read_bytes()[:-8])
    with pytest.raises(NotACheckpointError) as info:
        formats.detect(cut, "cut.npy").read(cut, "cut.npy")
    assert info.value.reason == "invalid NumPy file: the file is truncated"
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedError) as refused:
        formats.detect(objects, "objects.npy").read(objects, "objects.npy")
    assert "object array" in str(refused.value) and "never loads" in str(refused.value)
    npz = tmp_path / "a.npz"
    np.savez(npz, a=np.arange(3))
    cut_npz = tmp_path / "cut.npz"
    cut_npz.write_bytes(npz.read_bytes()[:-30])
    with pytest.raises(NotACheckpointError) as broken:
        formats.detect(cut_npz, "cut.npz").read(cut_npz, "cut.npz")
    assert broken.value.reason.startswith("truncated or corrupt .npz archive (")


def test_a_truncated_npz_is_refused_at_add_in_one_line(repo: Repo) -> None:
    repo.theta("track", "*.npz")
    path = repo.path / "w.npz"
    np.savez(path, a=np.arange(1000.0))
    path.write_bytes(path.read_bytes()[:-40])
    proc = repo.git("add", ".gitattributes", "w.npz", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        "git-theta: error: w.npz: not a checkpoint git-theta can read: truncated or corrupt "
        ".npz archive (File is not a zip file)"
    )
