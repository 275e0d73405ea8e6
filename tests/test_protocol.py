"""git's pkt-line framing and long-running filter protocol, in memory and through real git."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from git_theta.errors import NotARepositoryError, UsageError
from git_theta.gitio import filter_process, pktline
from git_theta.gitio.pktline import ProtocolError
from git_theta.manifest import Manifest
from tests.helpers import Repo

# ------------------------------------------------------------------------------ pkt-line


def test_write_packet_text_and_flush_exact_bytes() -> None:
    out = io.BytesIO()
    pktline.write_packet(out, b"a")
    pktline.write_text(out, "version=2")
    pktline.write_flush(out)
    pktline.write_packet(out, b"\x00\xff")
    assert out.getvalue() == b"0005a" + b"000eversion=2\n" + b"0000" + b"0006\x00\xff"


def test_round_trip_of_packets_and_flushes() -> None:
    payloads: list[bytes | None] = [b"x", None, b"\n", bytes(range(256)) * 3, None, b"y" * 65516]
    out = io.BytesIO()
    for payload in payloads:
        if payload is None:
            pktline.write_flush(out)
        else:
            pktline.write_packet(out, payload)
    inp = io.BytesIO(out.getvalue())
    assert [pktline.read_packet(inp) for _ in payloads] == payloads
    with pytest.raises(EOFError):
        pktline.read_packet(inp)


def test_max_payload_is_65516_bytes() -> None:
    assert pktline.MAX_PAYLOAD == 65516
    out = io.BytesIO()
    pktline.write_packet(out, b"z" * 65516)
    assert out.getvalue()[:4] == b"fff0" and len(out.getvalue()) == 65520
    for bad in (b"z" * 65517, b""):
        with pytest.raises(ValueError) as info:
            pktline.write_packet(io.BytesIO(), bad)
        assert str(info.value) == "pkt-line payload must be 1 to 65516 bytes"


def test_uppercase_hex_length_is_accepted() -> None:
    assert pktline.read_packet(io.BytesIO(b"000Aabcdef")) == b"abcdef"


def test_empty_packet_0004_is_an_empty_payload_not_a_flush() -> None:
    assert pktline.read_packet(io.BytesIO(b"0004")) == b""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"0", "truncated pkt-line header"),
        (b"000", "truncated pkt-line header"),
        (b"zzzz", "invalid pkt-line header b'zzzz'"),
        (b"00g1abc", "invalid pkt-line header b'00g1'"),
        (b"0001", "invalid pkt-line length 1"),
        (b"0003", "invalid pkt-line length 3"),
        (b"000aab", "truncated pkt-line payload"),
        (b"fff0" + b"x" * 100, "truncated pkt-line payload"),
    ],
)
def test_read_packet_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        pktline.read_packet(io.BytesIO(data))
    assert str(info.value) == message


@pytest.mark.parametrize("header", [b"0x0a", b"+00a", b" 00a", b"00_a", b"-00a", b"00a "])
def test_read_packet_requires_four_hex_digits(header: bytes) -> None:
    """git itself rejects any length that is not four hex digits."""
    with pytest.raises(ProtocolError):
        pktline.read_packet(io.BytesIO(header + b"abcdef"))


def test_read_text_list_strips_newlines_up_to_flush() -> None:
    inp = io.BytesIO(b"0012command=clean\n0016pathname=model.pt\n0009plain0000rest")
    assert pktline.read_text_list(inp) == ["command=clean", "pathname=model.pt", "plain"]
    assert inp.read() == b"rest"


def test_read_content_up_to_flush() -> None:
    inp = io.BytesIO(b"0007abc0005d0000tail")
    assert list(pktline.read_content(inp)) == [b"abc", b"d"]
    assert inp.read() == b"tail"


def test_write_content_uses_largest_packets() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes = 65516 + 65516 + 22568
    out = io.BytesIO()
    pktline.write_content(out, io.BytesIO(data))
    raw = out.getvalue()
    assert raw[:4] == b"fff0" and raw[65520:65524] == b"fff0"
    assert raw[131040:131044] == b"%04x" % (22568 + 4)
    assert len(raw) == 131044 + 22568
    assert b"".join(pktline.read_content(io.BytesIO(raw + b"0000"))) == data


def test_write_content_of_nothing_writes_nothing() -> None:
    out = io.BytesIO()
    pktline.write_content(out, io.BytesIO(b""))
    assert out.getvalue() == b""


# ---------------------------------------------------------------- filter process (memory)

HANDSHAKE_IN = (
    b"0016git-filter-client\n"
    + b"000eversion=2\n"
    + b"0000"
    + b"0015capability=clean\n"
    + b"0016capability=smudge\n"
    + b"0015capability=delay\n"
    + b"0000"
)
HANDSHAKE_OUT = (
    b"0016git-filter-server\n"
    + b"000eversion=2\n"
    + b"0000"
    + b"0015capability=clean\n"
    + b"0016capability=smudge\n"
    + b"0000"
)


# what `git-theta filter-process` answers: it also takes delayed smudges
HANDSHAKE_OUT_PROCESS = HANDSHAKE_OUT[:-4] + b"0015capability=delay\n0000"


def packets(data: bytes) -> bytes:
    """``data`` as content packets of at most 65516 bytes, then a flush."""
    out = io.BytesIO()
    pktline.write_content(out, io.BytesIO(data))
    return out.getvalue() + b"0000"


def request(command: str, pathname: str, content: bytes) -> bytes:
    out = io.BytesIO()
    pktline.write_text(out, f"command={command}")
    pktline.write_text(out, f"pathname={pathname}")
    pktline.write_flush(out)
    return out.getvalue() + packets(content)


class Recorder:
    """A handler that records its calls and answers with ``answer(content)``."""

    def __init__(
        self,
        answer: Callable[[bytes], bytes] | None = None,
        fail: Exception | None = None,
        partial: bytes = b"",
    ) -> None:
        self.calls: list[tuple[str, str, bytes]] = []
        self.errors: list[tuple[str, str, BaseException]] = []
        self.answer = answer
        self.fail = fail
        self.partial = partial  # written before failing
        self.spool_dir: Path | None = None  # where the content must be spooled, when known

    def handle(self, command: str, pathname: str, src: Path, out: BinaryIO) -> None:
        assert self.spool_dir is None or src.parent == self.spool_dir
        content = src.read_bytes()
        self.calls.append((command, pathname, content))
        if self.fail is not None:
            out.write(self.partial)
            raise self.fail
        out.write(self.answer(content) if self.answer is not None else b"manifest!")

    def on_error(self, command: str, pathname: str, exc: BaseException) -> None:
        self.errors.append((command, pathname, exc))


def serve(recorder: Recorder, data: bytes, tmp_path: Path) -> bytes:
    out = io.BytesIO()
    tmp_dir = tmp_path / "filter-tmp"
    looked_up: list[Path] = []

    def find_tmp_dir() -> Path:
        looked_up.append(tmp_dir)
        return tmp_dir

    recorder.spool_dir = tmp_dir
    filter_process.serve(recorder.handle, recorder.on_error, find_tmp_dir, io.BytesIO(data), out)
    # the spool directory is looked up once, at the first request; never for a handshake alone
    assert len(looked_up) == (1 if b"command=" in data else 0)
    assert list(tmp_dir.glob("*")) == []  # spooled files are gone
    return out.getvalue()


def test_handshake_is_answered_exactly(tmp_path: Path) -> None:
    recorder = Recorder()
    assert serve(recorder, HANDSHAKE_IN, tmp_path) == HANDSHAKE_OUT
    assert recorder.calls == [] and recorder.errors == []


def test_only_offered_capabilities_are_claimed(tmp_path: Path) -> None:
    data = b"0016git-filter-client\n000eversion=2\n0000" + b"0016capability=smudge\n0000"
    assert serve(Recorder(), data, tmp_path) == (
        b"0016git-filter-server\n000eversion=2\n0000" + b"0016capability=smudge\n0000"
    )


@pytest.mark.parametrize(
    ("welcome", "message"),
    [
        (b"0016git-filter-server\n000eversion=2\n0000", "['git-filter-server', 'version=2']"),
        (b"0016git-filter-client\n000eversion=3\n0000", "['git-filter-client', 'version=3']"),
    ],
)
def test_bad_handshake_is_a_protocol_error(welcome: bytes, message: str) -> None:
    out = io.BytesIO()
    recorder = Recorder()
    with pytest.raises(ProtocolError) as info:
        filter_process.serve(recorder.handle, recorder.on_error, None, io.BytesIO(welcome), out)
    assert str(info.value) == f"unexpected filter handshake {message}"
    assert out.getvalue() == b""


def test_clean_request_is_answered_with_success_content_and_two_flushes(tmp_path: Path) -> None:
    recorder = Recorder()
    data = HANDSHAKE_IN + b"0012command=clean\n0016pathname=model.pt\n0000" + b"0008PK\x03\x040000"
    reply = serve(recorder, data, tmp_path)
    assert (
        reply == HANDSHAKE_OUT + b"0013status=success\n0000" + b"000dmanifest!" + b"0000" + b"0000"
    )
    assert recorder.calls == [("clean", "model.pt", b"PK\x03\x04")]
    assert recorder.errors == []


def test_handler_exception_is_answered_with_status_error_only(tmp_path: Path) -> None:
    boom = RuntimeError("boom")
    recorder = Recorder(fail=boom)
    data = HANDSHAKE_IN + request("smudge", "dir/model.pt", b"{manifest}")
    reply = serve(recorder, data, tmp_path)
    assert reply == HANDSHAKE_OUT + b"0011status=error\n0000"
    assert recorder.calls == [("smudge", "dir/model.pt", b"{manifest}")]
    assert recorder.errors == [("smudge", "dir/model.pt", boom)]
    assert recorder.errors[0][2] is boom


def test_failure_after_output_started_aborts_with_a_late_error_status(tmp_path: Path) -> None:
    # the protocol's abort: content so far, its flush, then status=error; git discards it
    boom = RuntimeError("boom")
    recorder = Recorder(fail=boom, partial=b"partial")
    data = HANDSHAKE_IN + request("smudge", "model.pt", b"{manifest}")
    reply = serve(recorder, data, tmp_path)
    assert reply == (
        HANDSHAKE_OUT
        + b"0013status=success\n0000"
        + b"000bpartial"
        + b"0000"
        + b"0011status=error\n0000"
    )
    assert recorder.errors == [("smudge", "model.pt", boom)]


def test_a_failed_file_does_not_stop_the_next_one(tmp_path: Path) -> None:
    class FailFirst(Recorder):
        def handle(self, command: str, pathname: str, src: Path, out: BinaryIO) -> None:
            self.fail = ValueError("first") if not self.calls else None
            super().handle(command, pathname, src, out)

    recorder = FailFirst(answer=lambda content: content.upper())
    data = HANDSHAKE_IN + request("clean", "a.pt", b"aaa") + request("clean", "b.pt", b"bbb")
    reply = serve(recorder, data, tmp_path)
    assert reply == (
        HANDSHAKE_OUT
        + b"0011status=error\n0000"
        + b"0013status=success\n0000"
        + b"0007BBB"
        + b"00000000"
    )
    assert [e[:2] for e in recorder.errors] == [("clean", "a.pt")]


def test_unsupported_command_is_an_error_for_that_file(tmp_path: Path) -> None:
    recorder = Recorder()
    reply = serve(recorder, HANDSHAKE_IN + request("fsck", "model.pt", b"x"), tmp_path)
    assert reply == HANDSHAKE_OUT + b"0011status=error\n0000"
    assert recorder.calls == []
    ((command, pathname, exc),) = recorder.errors
    assert (command, pathname, type(exc), str(exc)) == (
        "fsck",
        "model.pt",
        UsageError,
        "git asked for the filter command 'fsck', which git-theta does not serve (it serves "
        "clean and smudge)",
    )


def test_large_content_in_and_out_is_split_into_max_packets(tmp_path: Path) -> None:
    content = bytes(range(251)) * 530  # 133030 bytes: 65516 + 65516 + 1998
    recorder = Recorder(answer=lambda c: c[::-1])
    reply = serve(recorder, HANDSHAKE_IN + request("smudge", "model.pt", content), tmp_path)
    assert recorder.calls == [("smudge", "model.pt", content)]
    body = reply[len(HANDSHAKE_OUT) :]
    expected_answer = content[::-1]
    assert body == (
        b"0013status=success\n0000"
        + b"fff0"
        + expected_answer[:65516]
        + b"fff0"
        + expected_answer[65516:131032]
        + b"%04x" % (1998 + 4)
        + expected_answer[131032:]
        + b"0000"
        + b"0000"
    )


def test_content_of_many_packets_arrives_exact(tmp_path: Path) -> None:
    content = os.urandom(350_001)
    recorder = Recorder(answer=lambda c: b"ok")
    data = HANDSHAKE_IN + request("clean", "a.pt", content) + request("clean", "b.pt", b"x")
    reply = serve(recorder, data, tmp_path)
    assert recorder.calls == [("clean", "a.pt", content), ("clean", "b.pt", b"x")]
    assert reply == HANDSHAKE_OUT + (b"0013status=success\n0000" + b"0006ok" + b"00000000") * 2


def test_no_spool_directory_fails_each_file_and_keeps_the_stream(tmp_path: Path) -> None:
    recorder = Recorder()
    missing = NotARepositoryError(str(tmp_path))

    def no_tmp_dir() -> Path:
        raise missing

    data = HANDSHAKE_IN + request("clean", "a.pt", b"A" * 70_000) + request("smudge", "b.pt", b"B")
    out = io.BytesIO()
    filter_process.serve(recorder.handle, recorder.on_error, no_tmp_dir, io.BytesIO(data), out)
    assert out.getvalue() == HANDSHAKE_OUT + b"0011status=error\n0000" * 2
    assert recorder.calls == []
    assert recorder.errors == [("clean", "a.pt", missing), ("smudge", "b.pt", missing)]


def test_empty_content_and_empty_answer(tmp_path: Path) -> None:
    recorder = Recorder(answer=lambda c: b"")
    reply = serve(recorder, HANDSHAKE_IN + request("clean", "model.pt", b""), tmp_path)
    assert reply == HANDSHAKE_OUT + b"0013status=success\n0000" + b"0000" + b"0000"
    assert recorder.calls == [("clean", "model.pt", b"")]


# ---------------------------------------------------------------------- through real git


def _safetensors_file(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(3)
    save_file(
        {"w": torch.randn(8, 8, generator=gen), "b": torch.randn(8, generator=gen).half()},
        str(path),
        metadata={"step": "10"},
    )


def _pytorch_file(path: Path) -> None:
    import torch

    from tests.helpers import seeded_state_dict

    state = seeded_state_dict(n=2, size=8, seed=4)
    torch.save({"model": state, "epoch": 2, "tied": state["layers.0.weight"].detach()}, path)


def _theta(repo: Repo, *args: str, stdin: bytes) -> bytes:
    proc = subprocess.run(["git", "theta", *args], cwd=repo.path, input=stdin, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    return proc.stdout


@pytest.mark.parametrize("make", [_safetensors_file, _pytorch_file], ids=["safetensors", "pytorch"])
def test_process_filter_and_one_shot_filters_agree(
    repo: Repo, make: Callable[[Path], None]
) -> None:
    assert repo.git("config", "filter.theta.process").stdout == "git-theta filter-process\n"
    assert repo.git("config", "filter.theta.clean").stdout == "git-theta clean %f\n"
    assert repo.git("config", "filter.theta.smudge").stdout == "git-theta smudge %f\n"
    checkpoint = repo.path / "model.pt"
    make(checkpoint)
    original = checkpoint.read_bytes()

    env = {**os.environ, "GIT_TRACE": "1"}
    add = subprocess.run(["git", "add", "model.pt"], cwd=repo.path, env=env, capture_output=True)
    assert add.returncode == 0, add.stderr.decode()
    assert "git-theta filter-process" in add.stderr.decode()  # the long-running filter ran

    manifest = repo.blob(":model.pt")
    assert Manifest.from_bytes(manifest).to_bytes() == manifest
    assert _theta(repo, "clean", "model.pt", stdin=original) == manifest

    repo.git("commit", "-q", "-m", "add model")
    checkpoint.unlink()
    checkout = subprocess.run(
        ["git", "checkout", "--", "model.pt"], cwd=repo.path, env=env, capture_output=True
    )
    assert checkout.returncode == 0, checkout.stderr.decode()
    assert "git-theta filter-process" in checkout.stderr.decode()
    checked_out = checkpoint.read_bytes()
    assert _theta(repo, "smudge", "model.pt", stdin=manifest) == checked_out
    if make is _safetensors_file:
        assert checked_out == original
    assert repo.status() == ""


def test_process_filter_error_fails_git_add_with_one_message(repo: Repo) -> None:
    (repo.path / "model.pt").write_bytes(b"PK\x03\x04 a torch zip cut short\n")
    add = repo.git("add", "model.pt", check=False)
    assert add.returncode != 0
    assert (
        "git-theta: error: model.pt: not a checkpoint git-theta can read: truncated or corrupt "
        "PyTorch zip archive (File is not a zip file)\n"
    ) in add.stderr
    assert repo.git("ls-files", "--stage", "model.pt").stdout == ""


def test_one_shot_smudge_of_non_manifest_passes_it_through(repo: Repo) -> None:
    assert _theta(repo, "smudge", "model.pt", stdin=b"plain text\n") == b"plain text\n"


def run_filter_process(cwd: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """The real `git theta filter-process` in ``cwd``, fed ``data``."""
    return subprocess.run(
        [sys.executable, "-m", "git_theta", "filter-process"],
        cwd=cwd,
        input=data,
        capture_output=True,
    )


def test_filter_process_serves_its_stdin(repo: Repo) -> None:
    """The real `git theta filter-process`, driven by hand: handshake and an error reply."""
    data = HANDSHAKE_IN + request("clean", "model.pt", b"PK\x03\x04 cut")
    proc = run_filter_process(repo.path, data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == HANDSHAKE_OUT_PROCESS + b"0011status=error\n0000"
    assert proc.stderr.decode() == (
        "git-theta: error: model.pt: not a checkpoint git-theta can read: truncated or corrupt "
        "PyTorch zip archive (File is not a zip file)\n"
    )


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        # git died while sending a file
        (
            b"0012command=clean\n0016pathname=model.pt\n0000" + b"0009PK\x03\x04x",
            "git closed the filter's input in the middle of a request",
        ),
        (
            b"00zz",
            "the filter's input is not git's long-running filter protocol (invalid pkt-line "
            "header b'00zz'): `git-theta filter-process` is started by git, as `git theta "
            "install` sets up",
        ),
    ],
    ids=["cut-off", "broken"],
)
def test_filter_process_ended_early_exits_1_with_one_line(
    repo: Repo, tail: bytes, message: str
) -> None:
    # no traceback: one line and a failed exit
    proc = run_filter_process(repo.path, HANDSHAKE_IN + tail)
    assert proc.returncode == 1
    assert proc.stdout == HANDSHAKE_OUT_PROCESS
    assert proc.stderr.decode() == f"git-theta: error: {message}\n"


def test_filter_process_outside_a_repository_fails_each_file(tmp_path: Path) -> None:
    data = HANDSHAKE_IN + request("clean", "model.pt", b"data") + request("smudge", "m.pt", b"x")
    proc = run_filter_process(tmp_path, data)
    assert proc.returncode == 0
    assert proc.stdout == HANDSHAKE_OUT_PROCESS + b"0011status=error\n0000" * 2
    message = str(NotARepositoryError(str(tmp_path.resolve())))
    assert proc.stderr.decode() == (
        f"git-theta: error: model.pt: {message}\ngit-theta: error: m.pt: {message}\n"
    )


class Waiter:
    """A delayer that delays every file and records what it readies."""

    def __init__(self) -> None:
        self.readied: list[list[tuple[str, bytes]]] = []

    def wants(self, pathname: str, src: Path) -> bool:
        return pathname.startswith("slow")

    def ready(self, delayed: list[tuple[str, Path]]) -> None:
        self.readied.append([(name, src.read_bytes()) for name, src in delayed])


def delayable(pathname: str, content: bytes) -> bytes:
    out = io.BytesIO()
    pktline.write_text(out, "command=smudge")
    pktline.write_text(out, f"pathname={pathname}")
    pktline.write_text(out, "can-delay=1")
    pktline.write_flush(out)
    return out.getvalue() + packets(content)


LIST = b"0021command=list_available_blobs\n0000"


def test_delayed_smudges_are_readied_together_and_answered_when_asked_again(
    tmp_path: Path,
) -> None:
    recorder, waiter = Recorder(answer=lambda c: c.upper()), Waiter()
    data = (
        HANDSHAKE_IN
        + delayable("slow-a", b"aaa")
        + delayable("fast", b"fff")
        + delayable("slow-b", b"bbb")
        + LIST
        + request("smudge", "slow-a", b"")  # git asks again, with empty content
        + request("smudge", "slow-b", b"")
        + LIST
    )
    out = io.BytesIO()
    filter_process.serve(
        recorder.handle, recorder.on_error, lambda: tmp_path, io.BytesIO(data), out, waiter
    )
    stream = io.BytesIO(out.getvalue())
    assert pktline.read_text_list(stream) == ["git-filter-server", "version=2"]
    assert pktline.read_text_list(stream) == [
        "capability=clean",
        "capability=smudge",
        "capability=delay",
    ]
    assert pktline.read_text_list(stream) == ["status=delayed"]
    assert pktline.read_text_list(stream) == ["status=success"]  # fast: answered now
    assert b"".join(pktline.read_content(stream)) == b"FFF"
    assert pktline.read_text_list(stream) == []
    assert pktline.read_text_list(stream) == ["status=delayed"]
    assert pktline.read_text_list(stream) == ["pathname=slow-a", "pathname=slow-b"]
    assert pktline.read_text_list(stream) == ["status=success"]
    for content in (b"AAA", b"BBB"):
        assert pktline.read_text_list(stream) == ["status=success"]
        assert b"".join(pktline.read_content(stream)) == content
        assert pktline.read_text_list(stream) == []
    assert pktline.read_text_list(stream) == []  # nothing left delayed
    assert pktline.read_text_list(stream) == ["status=success"]
    assert stream.read() == b""
    assert waiter.readied == [[("slow-a", b"aaa"), ("slow-b", b"bbb")]]  # one batch
    assert [(c, p, x) for c, p, x in recorder.calls] == [
        ("smudge", "fast", b"fff"),
        ("smudge", "slow-a", b"aaa"),
        ("smudge", "slow-b", b"bbb"),
    ]
    assert list(tmp_path.glob("theta-in-*")) == []  # kept contents are gone


def test_without_a_delayer_delay_is_not_claimed(tmp_path: Path) -> None:
    assert serve(Recorder(), HANDSHAKE_IN, tmp_path) == HANDSHAKE_OUT
