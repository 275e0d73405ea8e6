"""End-to-end failures: bad checkpoints, pickles that would run code, and a damaged object
store make git's command fail with one clear git-theta message and change nothing else."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import re
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import Repo, assert_same_object, seeded_state_dict

PREFIX = "git-theta: error: model.pt: "
NOT_A_CHECKPOINT = PREFIX + "not a checkpoint git-theta can read: "

# ------------------------------------------------------------------------------ helpers


def good_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save(seeded_state_dict(n=4, size=16, seed=1), buf)
    return buf.getvalue()


def truncated() -> bytes:
    good = good_checkpoint()
    return good[: len(good) // 2]


def garbled_pickle() -> bytes:
    """A valid zip archive (every CRC right) whose data.pkl bytes are garbled."""
    source = zipfile.ZipFile(io.BytesIO(good_checkpoint()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = bytes(b ^ 0x5A for b in data)
            archive.writestr(info, data)
    result = out.getvalue()
    assert zipfile.ZipFile(io.BytesIO(result)).testzip() is None
    return result


def random_bytes() -> bytes:
    gen = torch.Generator().manual_seed(5)
    data = torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).numpy().tobytes()
    assert data[:2] != b"PK" and data[8:9] != b"{"
    return data


def git_theta_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("git-theta")]


def lfs_files(repo: Repo) -> set[str]:
    """Every file under .git/lfs (objects, tmp, anything else), relative to it."""
    root = repo.path / ".git" / "lfs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def object_path(repo: Repo, oid: str) -> Path:
    return repo.path / ".git" / "lfs" / "theta" / "objects" / oid[:2] / oid[2:4] / oid


def commit_good(repo: Repo) -> dict[str, torch.Tensor]:
    state = seeded_state_dict(n=3, size=16, seed=2)
    torch.save(state, repo.path / "model.pt")
    repo.commit_file("model.pt", "good")
    return state


def assert_add_refused(repo: Repo, content: bytes, expected_line: str) -> None:
    """`git add model.pt` with ``content`` fails with exactly ``expected_line`` from git-theta
    and leaves the index, the work tree file and the object store as they were; so does the
    one-shot clean filter, writing nothing to stdout."""
    path = repo.path / "model.pt"
    path.write_bytes(content)
    index = repo.git("ls-files", "-s", "model.pt").stdout
    assert index  # the path has a committed manifest that must stay
    store = lfs_files(repo)
    objects = repo.objects()

    proc = repo.git("add", "model.pt", check=False)
    assert proc.returncode == 128
    assert git_theta_lines(proc.stderr) == [expected_line]
    assert all(line.startswith("fatal: ") for line in proc.stderr.splitlines()[1:])
    assert repo.git("ls-files", "-s", "model.pt").stdout == index
    assert path.read_bytes() == content
    assert repo.objects() == objects
    assert lfs_files(repo) == store
    assert not any(f.startswith("tmp/") for f in lfs_files(repo))

    with open(path, "rb") as stdin:
        one_shot = subprocess.run(
            ["git", "theta", "clean", "model.pt"], cwd=repo.path, stdin=stdin, capture_output=True
        )
    assert one_shot.returncode == 1
    assert one_shot.stdout == b""
    assert one_shot.stderr.decode().splitlines() == [expected_line]
    assert lfs_files(repo) == store
    assert path.read_bytes() == content


# ------------------------------------------------------------------ unreadable checkpoints


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            truncated,
            "truncated or corrupt PyTorch zip archive (File is not a zip file)",
        ),
        (
            garbled_pickle,
            "invalid PyTorch checkpoint: invalid pickle: at position 0, opcode b'\\xda' unknown",
        ),
    ],
    ids=["truncated", "garbled-pickle"],
)
def test_unreadable_checkpoint_is_refused(
    repo: Repo, make: Callable[[], bytes], reason: str
) -> None:
    commit_good(repo)
    assert_add_refused(repo, make(), NOT_A_CHECKPOINT + reason)


# -------------------------------------------------------------------- nothing executes


class RunsCode:
    """Unpickling this calls ``func(arg)``."""

    def __init__(self, func: Callable[[str], Any], arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, (self.arg,))


def payloads(marker: Path) -> dict[str, RunsCode]:
    return {
        "posix.system": RunsCode(os.system, f"touch {marker}"),
        "builtins.exec": RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


# torch.save pickles with protocol 2, which writes builtins under their Python 2 module name
@pytest.mark.parametrize(
    ("payload", "refused"),
    [("posix.system", "posix.system"), ("builtins.exec", "__builtin__.exec")],
    ids=["os.system", "exec"],
)
def test_pickle_that_runs_code_is_refused_and_runs_nothing(
    repo: Repo, tmp_path: Path, payload: str, refused: str
) -> None:
    # the payload is live: an unrestricted unpickler runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(payloads(control)[payload]))
    assert control.exists()

    marker = tmp_path / "marker"
    state = seeded_state_dict(n=2, size=8, seed=3)
    buf = io.BytesIO()
    torch.save({"model": state, "hook": payloads(marker)[payload], "epoch": 1}, buf)
    commit_good(repo)
    assert_add_refused(
        repo,
        buf.getvalue(),
        f"{PREFIX}refused to load: its pickle asks for `{refused}`, which could run code; "
        "git-theta loads only tensors and plain values",
    )
    assert not marker.exists()


def test_bare_pickle_that_runs_code_is_stored_whole_never_unpickled(
    repo: Repo, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    data = pickle.dumps({"weights": [1.0, 2.0], "hook": payloads(marker)["posix.system"]})
    commit_good(repo)
    (repo.path / "model.pt").write_bytes(data)
    proc = repo.git("add", "model.pt")
    assert git_theta_lines(proc.stderr) == [
        "git-theta: model.pt is in no checkpoint format: stored whole, as one object"
    ]
    assert not marker.exists()
    (repo.path / "model.pt").unlink()
    repo.git("checkout", "--", "model.pt")
    assert (repo.path / "model.pt").read_bytes() == data
    assert not marker.exists()


# ------------------------------------------------------------------ damaged object store


def _tensor_object(repo: Repo, name: str) -> str:
    record = json.loads(repo.blob("HEAD:model.pt"))["tensors"][name]
    (obj,) = record["storage"]["objects"]
    return obj["oid"]


def _checkout_fails(repo: Repo) -> str:
    """Delete model.pt, `git checkout -- model.pt` fails and writes no file; the message."""
    path = repo.path / "model.pt"
    index = repo.git("ls-files", "-s").stdout
    path.unlink()
    proc = repo.git("checkout", "--", "model.pt", check=False)
    assert proc.returncode == 128
    assert proc.stdout == ""
    assert not path.exists()
    assert repo.status() == " D model.pt\n"
    assert repo.git("ls-files", "-s").stdout == index
    lines = git_theta_lines(proc.stderr)
    assert len(lines) == 1
    assert all(line.startswith("fatal: ") for line in proc.stderr.splitlines()[1:])
    return lines[0]


def test_broken_install_fails_the_file_with_one_message(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the filter loads its libraries at the first request: a failure there is that file's
    # error, reported like any other, not a filter process that dies mid-protocol
    commit_good(repo)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "blosc").mkdir()  # c-blosc compresses what `git add` stores
    (shadow / "blosc" / "__init__.py").write_text("")
    (shadow / "blosc" / "blosc_extension.py").write_text('raise ImportError("blosc is broken")\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    changed = seeded_state_dict(n=3, size=16, seed=9)
    buf = io.BytesIO()
    torch.save(changed, buf)
    assert_add_refused(repo, buf.getvalue(), PREFIX + "ImportError: blosc is broken")


def test_corrupt_object_fails_checkout(repo: Repo) -> None:
    state = commit_good(repo)
    oid = _tensor_object(repo, "layers.1.weight")
    obj = object_path(repo, oid)
    good = obj.read_bytes()
    obj.write_bytes(bytes(b ^ 0x01 for b in good))  # same size, every byte different

    line = _checkout_fails(repo)
    objects_dir = os.path.realpath(repo.path / ".git" / "lfs" / "theta" / "objects")
    assert line == (
        f"{PREFIX}tensor `layers.1.weight`: object {oid[:12]}… in {objects_dir} is corrupt (its sha256 does not match): "
        "run `git theta fsck --fetch` to download a good copy"
    )

    obj.write_bytes(good)  # with the object repaired, the same checkout works
    repo.git("checkout", "--", "model.pt")
    assert_same_object(state, torch.load(repo.path / "model.pt", weights_only=True))
    assert repo.status() == ""


def test_missing_object_fails_checkout(repo: Repo) -> None:
    state = commit_good(repo)
    oid = _tensor_object(repo, "layers.1.weight")
    obj = object_path(repo, oid)
    good = obj.read_bytes()
    obj.unlink()

    line = _checkout_fails(repo)
    assert line.startswith(PREFIX)
    assert "`layers.1.weight" in line  # names the tensor
    # and the command that gets the object (`git lfs fetch` would not: manifests are not
    # LFS pointers), a command that exists
    named = re.findall(r"`git theta ([a-z-]+)", line)
    assert {"fetch", "checkout"} & set(named), line
    for command in named:
        assert repo.theta(command, "--help", check=False).returncode == 0, command
    assert oid not in repo.objects()

    obj.write_bytes(good)
    repo.git("checkout", "--", "model.pt")
    assert_same_object(state, torch.load(repo.path / "model.pt", weights_only=True))
    assert repo.status() == ""


def _commit_forged(repo: Repo, change: Callable[[dict[str, Any]], None]) -> None:
    """Commit HEAD's manifest of model.pt as ``change`` edits it (its JSON value)."""
    value = json.loads(repo.blob("HEAD:model.pt"))
    change(value)
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        cwd=repo.path,
        input=json.dumps(value).encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    repo.git("update-index", "--cacheinfo", f"100644,{blob.strip()},model.pt")
    repo.git("commit", "-qm", "forged")


def test_checkout_verifies_each_tensor_by_its_blake3(repo: Repo) -> None:
    """A record whose BLAKE3 is not its tensor's (here: another tensor's) never checks out,
    though its identity hash and objects are right."""
    commit_good(repo)
    oid = _tensor_object(repo, "layers.1.weight")

    def swap(value: dict[str, Any]) -> None:
        tensors = value["tensors"]
        tensors["layers.1.weight"]["blake3"] = tensors["layers.0.weight"]["blake3"]

    _commit_forged(repo, swap)
    assert _checkout_fails(repo) == (
        f"{PREFIX}tensor `layers.1.weight`: rebuilt from object {oid[:12]}…, it does not match "
        "its recorded hash, though the objects are sound: the manifest is damaged (check it out "
        "again from a good commit)"
    )


def test_a_large_tensor_streamed_to_git_is_verified_too(repo: Repo) -> None:
    """A tensor large enough to go to git piece by piece as it decodes is verified when its
    last piece has gone: a wrong BLAKE3 fails the file, git writes none of it, and `git theta
    checkout` leaves nothing behind either."""
    from git_theta.filter import STREAM_MIN_BYTES

    gen = torch.Generator().manual_seed(8)
    rows = STREAM_MIN_BYTES // 4096 + 1
    state = {"small": torch.randn(16, generator=gen), "big": torch.randn(rows, 1024, generator=gen)}
    torch.save(state, repo.path / "model.pt")
    repo.commit_file("model.pt", "good")
    oid = _tensor_object(repo, "big")

    def swap(value: dict[str, Any]) -> None:
        tensors = value["tensors"]
        tensors["big"]["blake3"] = tensors["small"]["blake3"]

    _commit_forged(repo, swap)
    expected = (
        f"{PREFIX}tensor `big`: rebuilt from object {oid[:12]}…, it does not match its "
        "recorded hash, though the objects are sound: the manifest is damaged (check it out "
        "again from a good commit)"
    )
    assert _checkout_fails(repo) == expected
    proc = repo.theta("checkout", check=False)
    assert proc.returncode == 1
    assert git_theta_lines(proc.stderr) == [expected]  # naming the file, as git's filter does
    assert sorted(p.name for p in repo.path.iterdir()) == [".git", ".gitattributes"]
    repo.git("reset", "-q", "--hard", "HEAD~1")  # the good manifest checks out whole
    assert_same_object(state, torch.load(repo.path / "model.pt", weights_only=True))


def test_a_record_whose_identity_hash_disagrees_with_its_blake3_is_found_by_fsck(
    repo: Repo,
) -> None:
    """Checkout verifies the BLAKE3, so such a record checks out what its BLAKE3 names; fsck
    checks both hashes and reports it, and it never passes for the tensor its identity
    hash names in a diff."""
    state = commit_good(repo)

    def relabel(value: dict[str, Any]) -> None:
        tensors = value["tensors"]
        tensors["layers.1.weight"]["hash"] = tensors["layers.0.weight"]["hash"]

    _commit_forged(repo, relabel)
    (repo.path / "model.pt").unlink()
    repo.git("checkout", "--", "model.pt")
    assert_same_object(state, torch.load(repo.path / "model.pt", weights_only=True))
    fsck = repo.theta("fsck", check=False)
    head = repo.git("rev-parse", "HEAD").stdout.strip()[:10]
    assert fsck.returncode == 1
    assert fsck.stdout.splitlines()[0] == (
        f"model.pt in {head}: tensor `layers.1.weight`: decodes to data that does not match "
        "its recorded hash"
    )
