"""Hostile input: what one file's content does ends with its own read. Every hostile input
runs the product in a subprocess under an address-space limit and a timeout."""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from git_theta.errors import NotACheckpointError
from git_theta.formats.pytorch import PyTorchFormat
from tests.helpers import Repo, claiming

LIMIT = 1 << 30  # bytes of address space for the git command under test (and its children)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 * LIMIT, 4 * LIMIT))


def _limited_git(repo: Repo, *args: str) -> subprocess.CompletedProcess[str]:
    """`git ARGS` under the address-space limit and a timeout."""
    return subprocess.run(
        ["git", *args],
        cwd=repo.path,
        capture_output=True,
        text=True,
        preexec_fn=_limits,
        timeout=60,
    )


def _limited_add(repo: Repo, *paths: str) -> subprocess.CompletedProcess[str]:
    return _limited_git(repo, "add", *paths)


def _stage_manifest(repo: Repo, path: str, manifest: dict[str, object]) -> None:
    """Put ``manifest`` in the index at ``path`` as it is (no filter), the work file gone."""
    import json

    data = json.dumps(manifest).encode()
    proc = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=repo.path, input=data, capture_output=True
    )
    repo.git("update-index", "--cacheinfo", f"100644,{proc.stdout.decode().strip()},{path}")
    (repo.path / path).unlink()


def _with_pickle(valid: bytes, pickle_bytes: bytes) -> bytes:
    """``valid`` (a torch.save archive) with its data.pkl replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(valid)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)
    return out.getvalue()


def _saved(value: object) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


# a pickle that BUILDs the allowed global torch.Size, replacing how it builds sizes with set
REBUILD_SIZE = b"\x80\x02ctorch\nSize\n}(X\x06\x00\x00\x00_buildcbuiltins\nset\nub0}."


def test_a_pickle_cannot_change_the_globals_another_read_uses(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(_with_pickle(_saved({}), REBUILD_SIZE))
    valid = tmp_path / "valid.pt"
    valid.write_bytes(_saved({"size": torch.Size([3, 224, 224]), "w": torch.ones(2)}))
    fmt = PyTorchFormat()
    with pytest.raises(
        NotACheckpointError, match="the pickle changes `Size`, which it may only call"
    ):
        fmt.read(hostile, "hostile.pt")
    root = fmt.read(valid, "valid.pt").format["root"]
    assert ["size", {"torch.Size": [3, 224, 224]}] in root["dict"]


@pytest.mark.timeout(120)
def test_a_hostile_file_in_the_same_git_add_changes_nothing_for_the_others(
    repo: Repo, tmp_path: Path
) -> None:
    repo.theta("track", "*.pt")
    valid = _saved({"size": torch.Size([3, 224, 224]), "w": torch.ones(2)})
    (repo.path / "a_hostile.pt").write_bytes(_with_pickle(_saved({}), REBUILD_SIZE))
    (repo.path / "b_valid.pt").write_bytes(valid)
    proc = _limited_add(repo, "a_hostile.pt", "b_valid.pt")
    assert proc.returncode != 0
    assert (
        "git-theta: error: a_hostile.pt: not a checkpoint git-theta can read: invalid PyTorch "
        "checkpoint: the pickle changes `Size`, which it may only call" in proc.stderr
    )
    assert "a_hostile.pt" not in repo.git("ls-files").stdout
    repo.git("add", "b_valid.pt")
    alone = Repo.init(tmp_path / "alone")
    alone.theta("install", "--local")
    alone.theta("track", "*.pt")
    (alone.path / "b_valid.pt").write_bytes(valid)
    alone.git("add", "b_valid.pt")
    assert repo.blob(":b_valid.pt") == alone.blob(":b_valid.pt")
    assert b'"torch.Size": [3, 224, 224]' in repo.blob(":b_valid.pt")


def _shared(depth: int) -> object:
    x: object = ()
    for _ in range(depth):
        x = (x, x)  # pickled once per level; expanded, 2**depth values
    return x


def _cycle() -> object:
    loop: list[object] = []
    loop.append(loop)
    return loop


def _deep(depth: int) -> object:
    x: object = []
    for _ in range(depth):
        x = [x]
    return x


def _shared_deeper() -> object:
    """A container 60 deep, shared by a reference 50 deeper (within limits where first met)."""
    inner = _deep(60)
    outer: object = inner
    for _ in range(50):
        outer = [outer]
    return {"a": inner, "b": outer}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("value", "what"),
    [
        (_shared(60), "holds more than 1000000 values (or shares containers)"),
        (_cycle(), "nests containers more than 100 deep (or in a cycle)"),
        (_deep(300), "nests containers more than 100 deep (or in a cycle)"),
        (10**100_000, "holds an integer of 332193 bits"),
        (_shared_deeper(), "nests containers more than 100 deep (or in a cycle)"),
    ],
    ids=["shared-references", "cycle", "deep", "huge-integer", "shared-deeper"],
)
def test_pickles_past_the_limits_get_one_line(repo: Repo, value: object, what: str) -> None:
    (repo.path / "model.pt").write_bytes(_saved({"w": torch.ones(2), "x": value}))
    proc = _limited_add(repo, "model.pt")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert errors == [
        f"git-theta: error: model.pt: not a checkpoint git-theta can read: its pickle {what}: "
        "git-theta stores at most 1000000 values nested 100 deep, integers of 256 bits and "
        "strings of 16 MiB"
    ]
    assert "model.pt" not in repo.git("ls-files").stdout


def test_damaged_manifests_get_one_clear_error() -> None:
    from git_theta.errors import ManifestError
    from git_theta.manifest import Manifest

    with pytest.raises(ManifestError, match=r'^manifest schema version "1" is not a number: '):
        Manifest.from_bytes(b'{"git_theta": "1", "format": {"name": "x"}, "tensors": {}}')
    deep = b'{"git_theta": 1, "format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ManifestError, match="nested too deeply"):
        Manifest.from_bytes(deep)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("words", "keep_chunks", "message"),
    [
        (10**12, True, "claims 4000000000000 bytes of data, more than this process may hold"),
        (
            1 << 28,
            False,
            "object lacks 67108864 of its 67108864 chunks, which would decode as 1073741824 "
            "bytes of zeros (git-theta stores every chunk): it is damaged or hostile",
        ),
    ],
)
def test_an_object_claiming_more_than_it_holds_fails_its_file_not_the_filter(
    repo: Repo, words: int, keep_chunks: bool, message: str
) -> None:
    torch.save({"w": torch.ones(4), "v": torch.zeros(3)}, repo.path / "model.pt")
    repo.commit_file("model.pt", "v1")
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    _forge_object(repo, manifest["tensors"]["w"], words, keep_chunks)
    _stage_manifest(repo, "model.pt", manifest)
    proc = _limited_git(repo, "checkout", "--", "model.pt")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert len(lines) == 1 and lines[0].startswith("git-theta: error: model.pt: tensor `w`: ")
    assert message in lines[0]
    assert "Aborted" not in proc.stderr and "bad_alloc" not in proc.stderr
    assert not (repo.path / "model.pt").exists()


def _forge_object(repo: Repo, record: dict[str, Any], words: int, keep_chunks: bool) -> None:
    """Point ``record`` at a copy of its object whose zarr.json claims ``words`` words (and
    that keeps its chunks, or holds only its zarr.json)."""
    import hashlib

    oid = record["storage"]["objects"][0]["oid"]
    store = repo.path / ".git" / "lfs" / "theta" / "objects"
    blob = claiming((store / oid[:2] / oid[2:4] / oid).read_bytes(), words, keep_chunks)
    bad = hashlib.sha256(blob).hexdigest()
    (store / bad[:2] / bad[2:4]).mkdir(parents=True, exist_ok=True)
    (store / bad[:2] / bad[2:4] / bad).write_bytes(blob)
    record["shape"] = [words]
    record["storage"]["objects"] = [{"oid": bad, "size": len(blob)}]


def _with_member(valid: bytes, suffix: str, data: bytes) -> bytes:
    """``valid`` with the member ending in ``suffix`` replaced by ``data``, deflated."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(valid)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith(suffix):
                dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, src.read(info))
    return out.getvalue()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("suffix", "size", "limit"),
    [("/data.pkl", 200 << 20, 64 << 20), ("/byteorder", 100 << 20, 16)],
    ids=["data.pkl", "byteorder"],
)
def test_a_deflated_record_is_never_inflated_past_its_limit(
    repo: Repo, suffix: str, size: int, limit: int
) -> None:
    hostile = _with_member(_saved({"w": torch.ones(2)}), suffix, b"\0" * size)
    assert len(hostile) < size // 100  # a few hundred KB on disk
    (repo.path / "model.pt").write_bytes(hostile)
    proc = _limited_add(repo, "model.pt")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    member = "archive" + suffix
    assert errors == [
        f"git-theta: error: model.pt: not a checkpoint git-theta can read: its `{member}` holds "
        f"{size} bytes, more than the {limit} git-theta reads"
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-header", "safetensors manifest has no `header`"),
        ("overlap", "safetensors manifest: tensor `b` overlaps or leaves a gap"),
        ("bad-json", "safetensors manifest has an invalid header ("),
    ],
)
def test_a_safetensors_manifest_its_library_would_refuse_is_refused(
    repo: Repo, damage: str, message: str
) -> None:
    import json

    from safetensors.torch import save_file

    repo.theta("track", "model.safetensors")
    save_file({"a": torch.ones(2), "b": torch.zeros(2)}, str(repo.path / "model.safetensors"))
    repo.git("add", ".gitattributes", "model.safetensors")
    repo.git("commit", "-q", "-m", "v1")
    manifest = json.loads(repo.blob("HEAD:model.safetensors"))
    if damage == "no-header":
        del manifest["format"]["header"]
    elif damage == "overlap":
        header = json.loads(manifest["format"]["header"])
        header["b"]["data_offsets"] = [4, 12]
        manifest["format"]["header"] = json.dumps(header)
    else:
        manifest["format"]["header"] = "{not json"
    _stage_manifest(repo, "model.safetensors", manifest)
    proc = _limited_git(repo, "checkout", "--", "model.safetensors")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert len(lines) == 1
    assert lines[0].startswith(f"git-theta: error: model.safetensors: {message}")
    assert not (repo.path / "model.safetensors").exists()


@pytest.mark.timeout(120)
def test_a_view_repeating_its_storage_is_stored_at_the_storage_size(repo: Repo) -> None:
    bomb = torch.arange(50000.0).as_strided((50000, 50000), (0, 1))  # 200 KB as 9.3 GiB
    zeros = torch.arange(16.0).as_strided((50000, 50000), (0, 0))  # one float as 9.3 GiB
    (repo.path / "model.pt").write_bytes(_saved({"w": bomb, "z": zeros, "b": torch.ones(3)}))
    proc = _limited_add(repo, "model.pt")
    assert (proc.returncode, proc.stderr) == (0, "")
    repo.git("commit", "-qm", "view")
    assert repo.store_bytes() < 250_000  # the 50000 floats and 3 ones, not 9.3 GiB
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    assert manifest["tensors"]["w"]["shape"] == [50000]  # the storages, stored whole
    assert manifest["tensors"]["z"]["shape"] == [16]
    (repo.path / "model.pt").unlink()
    proc = _limited_git(repo, "checkout", "--", "model.pt")
    assert (proc.returncode, proc.stderr) == (0, "")
    back = torch.load(repo.path / "model.pt", weights_only=True)
    assert (back["w"].shape, back["w"].stride()) == ((50000, 50000), (0, 1))
    assert back["w"].untyped_storage().nbytes() == 50000 * 4
    assert torch.equal(back["w"][0], bomb[0]) and torch.equal(back["w"][-1], bomb[-1])
    assert (back["z"].stride(), back["z"].untyped_storage().nbytes()) == ((0, 0), 64)
    assert float(back["z"][49999, 49999]) == 0.0
    assert torch.equal(back["b"], torch.ones(3))
    assert (repo.path / "model.pt").read_bytes() == _saved(
        {"w": bomb, "z": zeros, "b": torch.ones(3)}
    )
    assert repo.status() == ""


DAMAGED = "the manifest is damaged or was edited by hand (check the file out from a good commit)"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("root", "message"),
    [
        (
            {"dict": [[{"list": []}, {"tensor": "a"}]]},
            "uses a `list` as a dict key or set member, which Python refuses",
        ),
        ({"set": [{"dict": []}]}, "uses a `dict` as a dict key or set member"),
        ({"dict": [["a", {"int": 1}], ["a", {"int": 2}]]}, "has a `dict` with the same key twice"),
        (
            {"dict": [[{"int": 1}, {"int": 1}], [{"float": "0x1p+0"}, {"int": 2}]]},
            "has a `dict` with the same key twice",
        ),
        (
            {"set": [{"int": 2}, {"int": 1}]},
            "has a `set` whose members repeat or are out of order",
        ),
        ({"set": [{"int": 1}, {"int": 1}]}, "has a `set` whose members repeat or are out of order"),
        ({"dict": [["a", {"int": "12"}]]}, "has an invalid `int` value"),
        ({"dict": [["a", {"int": 10**100}]]}, "has an invalid `int` value"),
        ({"dict": [["a", {"float": "pi"}]]}, "has an invalid `float` value"),
        ({"dict": [["a", {"bytes": "***"}]]}, "has a `bytes` value that is not base64"),
        ({"dict": [["a", {"torch.Size": ["3"]}]]}, "has an invalid `torch.Size` value"),
        ({"dict": [["a", {"torch.device": "cpu"}]]}, "has an invalid `torch.device` value"),
        ({"dict": [["a", {"tensor": "nope"}]]}, "refers to unknown tensor `nope`"),
        ({"dict": [["a", {"tensor": "a", "extra": 1}]]}, "has an invalid tensor node"),
        ({"dict": [["a", {"code": "x"}]]}, "has an unknown node kind `code`"),
        ({"dict": [["a", 7]]}, "has a value that is not a node: 7"),
        (
            {"dict": [["a", {"tensor": "a", "view": {"shape": [9], "stride": [1]}}]]},
            "has a view of tensor `a` that does not fit the [2] elements it stores",
        ),
        (
            {"dict": [["a", {"tensor": "a", "view": {"shape": [2], "stride": [1], "offset": 1}}]]},
            "has a view of tensor `a` that does not fit the [2] elements it stores",
        ),
        (
            {"dict": [["a", {"tensor": "a", "view": {"shape": [2], "stride": [1], "offset": -1}}]]},
            "has an invalid view of tensor `a`",
        ),
        (
            {"dict": [["a", {"tensor": "a", "view": {"shape": [2], "stride": [-1]}}]]},
            "has an invalid view of tensor `a`",
        ),
        (json.loads("[" * 300 + "]" * 300), "has a value that is not a node"),
        ("deep", "holds more than 1000000 values or nests them too deeply"),
    ],
)
def test_a_pytorch_manifest_torch_would_refuse_is_refused_in_one_line(
    repo: Repo, root: object, message: str
) -> None:
    repo.theta("track", "model.pt")
    (repo.path / "model.pt").write_bytes(_saved({"a": torch.ones(2)}))
    repo.git("add", ".gitattributes", "model.pt")
    repo.git("commit", "-q", "-m", "v1")
    manifest = json.loads(repo.blob("HEAD:model.pt"))
    if root == "deep":
        root = {"tensor": "a"}
        for _ in range(200):
            root = {"list": [root]}
    manifest["format"]["root"] = root
    _stage_manifest(repo, "model.pt", manifest)
    proc = _limited_git(repo, "checkout", "--", "model.pt")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("git-theta:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"git-theta: error: model.pt: pytorch manifest {message}")
    assert lines[0].endswith(DAMAGED)
    assert not (repo.path / "model.pt").exists()


# ----------------------------------------------------------- must hold: each input, bounded

PEAK = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"peak-rss-kib={peak}\\n")
sys.exit(code)
"""


def _measured(repo: Repo, args: list[str], stdin: bytes = b"") -> tuple[int, bytes, list[str], int]:
    """``args`` run in ``repo`` under the address-space limit and a timeout: exit code,
    stdout, git-theta's stderr lines and the peak resident size (bytes) of its process tree."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *args],
        cwd=repo.path,
        input=stdin,
        capture_output=True,
        preexec_fn=_limits,
        timeout=60,
    )
    lines = proc.stderr.decode(errors="replace").splitlines()
    peak = int(lines[-1].removeprefix("peak-rss-kib=")) * 1024
    return proc.returncode, proc.stdout, [x for x in lines if x.startswith("git-theta:")], peak


def _inflating(member: str, size: int) -> bytes:
    """A torch.save archive whose ``member`` inflates to ``size`` zero bytes (about
    ``size / 230`` bytes on disk)."""
    out = io.BytesIO()
    zeros = bytes(1 << 20)
    valid = zipfile.ZipFile(io.BytesIO(_saved({"w": torch.ones(2)})))
    with valid, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in valid.infolist():
            if not info.filename.endswith(member):
                dst.writestr(info, valid.read(info))
                continue
            # deflated as it is written: memory holds 1 MiB of it
            with dst.open(info.filename, "w", force_zip64=True) as w:
                for _ in range(size >> 20):
                    w.write(zeros)
    assert len(out.getvalue()) < size // 200
    return out.getvalue()


GB3 = 3 << 30
HOSTILE_CHECKPOINTS = {
    "changes-globals": (
        lambda: _with_pickle(_saved({}), REBUILD_SIZE),
        "the pickle changes `Size`, which it may only call",
    ),
    "shared-references": (
        lambda: _saved({"x": _shared(60)}),
        "holds more than 1000000 values (or shares containers)",
    ),
    "cycle": (lambda: _saved({"x": _cycle()}), "nests containers more than 100 deep"),
    "deep": (lambda: _saved({"x": _deep(300)}), "nests containers more than 100 deep"),
    "huge-integer": (lambda: _saved({"x": 10**100_000}), "holds an integer of 332193 bits"),
    "inflating-data.pkl": (
        lambda: _inflating("/data.pkl", GB3),
        f"its `archive/data.pkl` holds {GB3} bytes, more than the 67108864 git-theta reads",
    ),
    "inflating-byteorder": (
        lambda: _inflating("/byteorder", GB3),
        f"its `archive/byteorder` holds {GB3} bytes, more than the 16 git-theta reads",
    ),
}


@pytest.fixture(scope="module")
def hostile_files() -> dict[str, bytes]:
    return {name: make() for name, (make, _) in HOSTILE_CHECKPOINTS.items()}


def _clean_requests(*files: tuple[str, bytes]) -> bytes:
    from tests.test_protocol import HANDSHAKE_IN, request

    return HANDSHAKE_IN + b"".join(request("clean", name, data) for name, data in files)


def _answers(out: bytes) -> list[tuple[str, bytes]]:
    """Each request's outcome (``error``: failed before or after output began) and content,
    from a filter process's output."""
    from git_theta.gitio import pktline

    stream = io.BytesIO(out)
    for _ in range(2):  # the handshake: version, then capabilities
        while pktline.read_packet(stream) is not None:
            pass
    answers = []
    while stream.tell() < len(out):
        status = pktline.read_text_list(stream)
        if status == ["status=error"]:  # failed before any output
            answers.append(("error", b""))
            continue
        content = b"".join(pktline.read_content(stream))
        final = pktline.read_text_list(stream)  # empty: keep status=success
        answers.append(("error" if final == ["status=error"] else "success", content))
    return answers


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(HOSTILE_CHECKPOINTS))
def test_each_hostile_checkpoint_one_line_bounded_and_the_next_file_as_if_alone(
    repo: Repo, tmp_path: Path, hostile_files: dict[str, bytes], name: str
) -> None:
    repo.theta("track", "*.pt")
    hostile = hostile_files[name]
    message = HOSTILE_CHECKPOINTS[name][1]
    valid = _saved({"size": torch.Size([3, 224, 224]), "w": torch.ones(2)})
    # git add: one line, nothing staged, the whole process tree under 1 GiB
    (repo.path / "model.pt").write_bytes(hostile)
    code, _, lines, peak = _measured(repo, ["git", "add", "model.pt"])
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith("git-theta: error: model.pt: not a checkpoint git-theta can read")
    assert message in lines[0]
    assert "model.pt" not in repo.git("ls-files").stdout
    assert peak < LIMIT, peak
    # one filter process, as git runs it: the hostile file fails, and the valid file after
    # it is stored exactly as when it is added alone
    requests = _clean_requests(("model.pt", hostile), ("valid.pt", valid))
    code, out, lines, peak = _measured(repo, ["git-theta", "filter-process"], requests)
    assert code == 0 and len(lines) == 1 and message in lines[0], lines
    assert peak < LIMIT, peak
    (failed, _), (status, manifest) = _answers(out)
    assert (failed, status) == ("error", "success")
    (repo.path / "valid.pt").write_bytes(valid)
    repo.git("add", "valid.pt")
    assert manifest == repo.blob(":valid.pt")
    assert b'"torch.Size": [3, 224, 224]' in manifest


HOSTILE_MANIFESTS = {
    "claims-terabytes": "claims 4000000000000 bytes of data, more than this process may hold",
    "only-zarr.json": "object lacks 67108864 of its 67108864 chunks",
    "list-as-dict-key": "pytorch manifest uses a `list` as a dict key or set member",
    "view-past-its-span": "pytorch manifest has a view of tensor `w` that does not fit",
    "safetensors-overlap": "safetensors manifest: tensor `b` overlaps or leaves a gap",
    "safetensors-no-header": "safetensors manifest has no `header`",
    "schema-as-string": 'manifest schema version "1" is not a number',
}


def _hostile_manifest(repo: Repo, name: str) -> tuple[str, bytes]:
    """The path and bytes of hostile manifest ``name``, made from a committed checkpoint."""
    from safetensors.torch import save_file

    path = "model.safetensors" if name.startswith("safetensors") else "model.pt"
    if path == "model.pt":
        torch.save({"w": torch.ones(4), "v": torch.zeros(3)}, repo.path / path)
    else:
        save_file({"a": torch.ones(2), "b": torch.zeros(2)}, str(repo.path / path))
    repo.commit_file(path, name)
    manifest = json.loads(repo.blob(f"HEAD:{path}"))
    if name == "claims-terabytes":
        _forge_object(repo, manifest["tensors"]["w"], 10**12, keep_chunks=True)
    elif name == "only-zarr.json":
        _forge_object(repo, manifest["tensors"]["w"], 1 << 28, keep_chunks=False)
    elif name == "list-as-dict-key":
        manifest["format"]["root"] = {"dict": [[{"list": []}, {"tensor": "w"}]]}
    elif name == "view-past-its-span":
        view = {"shape": [1 << 40, 1 << 40], "stride": [0, 1]}
        manifest["format"]["root"] = {"dict": [["w", {"tensor": "w", "view": view}]]}
    elif name == "safetensors-overlap":
        header = json.loads(manifest["format"]["header"])
        header["b"]["data_offsets"] = [4, 12]
        manifest["format"]["header"] = json.dumps(header)
    elif name == "safetensors-no-header":
        del manifest["format"]["header"]
    else:
        manifest["git_theta"] = "1"
    return path, json.dumps(manifest).encode()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(HOSTILE_MANIFESTS))
def test_each_hostile_manifest_one_line_bounded_and_the_next_file_as_if_alone(
    repo: Repo, name: str
) -> None:
    repo.theta("track", "*.pt", "*.safetensors")
    repo.git("commit", "-qm", "track", "--", ".gitattributes")
    torch.save({"size": torch.Size([3, 224, 224]), "w": torch.ones(2)}, repo.path / "valid.pt")
    repo.commit_file("valid.pt", "valid")
    (repo.path / "valid.pt").unlink()
    repo.git("checkout", "--", "valid.pt")
    alone = (repo.path / "valid.pt").read_bytes()  # the rebuilt file, checked out alone
    path, hostile = _hostile_manifest(repo, name)
    message = HOSTILE_MANIFESTS[name]
    # git checkout: one line, the work-tree file not written, the process tree under 1 GiB
    _stage_manifest(repo, path, json.loads(hostile))
    code, _, lines, peak = _measured(repo, ["git", "checkout", "--", path])
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"git-theta: error: {path}: ") and message in lines[0], lines
    assert not (repo.path / path).exists()
    assert peak < LIMIT, peak
    # one filter process: the hostile manifest fails, the valid one after it is rebuilt
    # exactly as when it is checked out alone
    from tests.test_protocol import HANDSHAKE_IN, request

    requests = HANDSHAKE_IN + request("smudge", path, hostile)
    requests += request("smudge", "valid.pt", repo.blob("HEAD:valid.pt"))
    code, out, lines, peak = _measured(repo, ["git-theta", "filter-process"], requests)
    assert code == 0 and len(lines) == 1 and message in lines[0], lines
    assert peak < LIMIT, peak
    (failed, _), (status, content) = _answers(out)
    assert (failed, status) == ("error", "success")
    assert content == alone
