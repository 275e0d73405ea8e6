"""The `git theta` command line, driven through real git in temporary repositories.

Every test runs the installed console script (through `git theta ...` as a user would, or
`git-theta ...` as git's filter driver does) and checks exit codes, the exact lines on stdout
and stderr, and the exact content of the files the command writes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Repo

THETA_ATTRS = "filter=theta diff=theta merge=theta -text"
FILTER_KEYS = {
    "filter.theta.process": "git-theta filter-process",
    "filter.theta.clean": "git-theta clean %f",
    "filter.theta.smudge": "git-theta smudge %f",
    "filter.theta.required": "true",
}
MERGE_KEYS = {
    "merge.theta.name": "git-theta: merge checkpoints tensor by tensor",
    "merge.theta.driver": "git-theta merge-driver %O %A %B %P",
    "merge.theta.recursive": "binary",
    "diff.theta.command": "git-theta diff-driver",
    "diff.theta.textconv": "git-theta textconv",
    "diff.theta.cachetextconv": "true",
}
CONFIG_KEYS = {**FILTER_KEYS, **MERGE_KEYS}
# `git config --global --list` of the private ~/.gitconfig that conftest writes.
BASE_GLOBAL = [
    "user.name=Test",
    "user.email=test@example.com",
    "init.defaultbranch=main",
    "advice.detachedhead=false",
]
INSTALLED = (
    "git-theta installed ({scope} config: filter.theta.process, filter.theta.clean, "
    "filter.theta.smudge, filter.theta.required, merge.theta.name, merge.theta.driver, merge.theta.recursive, diff.theta.command, diff.theta.textconv, diff.theta.cachetextconv)\n"
)
NOT_A_CHECKPOINT = (
    "{name}: not a checkpoint git-theta can read: its content is not in any known format "
    "(safetensors, pytorch, numpy, gguf, flax)"
)
BAD_PATTERN = (
    "git-theta: error: pattern {pattern!r} cannot be written to .gitattributes "
    "(no whitespace, and it may not start with # or !)\n"
)
LFS_MISSING = (
    "git-theta: error: git-lfs is not installed (`git lfs version` failed): install it "
    "(e.g. `apt-get install git-lfs`) and run `git theta install` again\n"
)
HIDDEN = {"clean", "smudge", "filter-process", "hook", "merge-driver", "diff-driver", "textconv"}
NOT_INSTALLED_WARNING = (
    "git-theta: warning: git-theta's filter is not configured here: run `git theta install`\n"
)


# ---------------------------------------------------------------------------- helpers


def run(
    *args: str | os.PathLike[str],
    cwd: Path,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command with bytes in and out (no check: tests assert the exit code)."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        input=input,
        capture_output=True,
        env={**os.environ, **env} if env else None,
    )


def text(proc: subprocess.CompletedProcess[bytes]) -> tuple[int, str, str]:
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def global_list(cwd: Path) -> list[str]:
    return run("git", "config", "--global", "--list", cwd=cwd).stdout.decode().splitlines()


def gitconfig(home: Path) -> str:
    return (home / ".gitconfig").read_text()


def human(n: int) -> str:
    """Sizes as `ls-files` prints them: bytes below 1 KiB, else one decimal in KiB/MiB/GiB."""
    if n < 1024:
        return f"{n} B"
    for power, unit in ((1, "KiB"), (2, "MiB")):
        if n < 1024 ** (power + 1):
            return f"{n / 1024**power:.1f} {unit}"
    return f"{n / 1024**3:.1f} GiB"


def store_size(repo: Repo) -> int:
    """Bytes of the LFS objects in the repository's store (ls-files' stored size, when the
    store holds exactly the objects of one manifest)."""
    root = repo.path / ".git" / "lfs" / "theta" / "objects"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def attrs_of(repo: Repo, *paths: str) -> str:
    return repo.git("check-attr", "filter", "--", *paths).stdout


@pytest.fixture(scope="session")
def checkpoint() -> bytes:
    """A torch.save state dict: w float32 16x16 (1024 bytes) and b float32 [128] (512 bytes)."""
    import torch

    buf = io.BytesIO()
    torch.save(
        {"w": torch.arange(256, dtype=torch.float32).reshape(16, 16), "b": torch.zeros(128)}, buf
    )
    return buf.getvalue()


LOGICAL_SIZE = "1.5 KiB"  # 16 * 16 * 4 + 128 * 4 = 1536 bytes


@pytest.fixture(autouse=True)
def _console_script_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put this interpreter's `git-theta` console script first on PATH, so that git finds
    it directly rather than through a version-manager shim (same program, faster start)."""
    bin_dir = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(bin_dir, "git-theta")):
        monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])


@pytest.fixture
def bare_repo(tmp_path: Path) -> Repo:
    """A new repository where git-theta is neither installed nor tracking anything."""
    return Repo.init(tmp_path / "bare")


@pytest.fixture
def installed(tmp_path: Path) -> Repo:
    """A new repository whose local config has the filter driver `git theta install` writes
    (written directly, to keep tests that are not about install fast); nothing tracked."""
    r = Repo.init(tmp_path / "repo")
    with open(r.path / ".git" / "config", "a") as config:
        config.write(
            '[filter "theta"]\n'
            + "".join(
                f"\t{key.rsplit('.', 1)[1]} = {value}\n" for key, value in FILTER_KEYS.items()
            )
        )
    return r


@pytest.fixture
def tracked(installed: Repo) -> Repo:
    """``installed`` with `model.pt` tracked in the root .gitattributes (committed)."""
    (installed.path / ".gitattributes").write_text(f"model.pt {THETA_ATTRS}\n")
    installed.git("add", ".gitattributes")
    installed.git("commit", "-q", "-m", "track model.pt")
    return installed


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory that is not inside any git repository (and env that makes sure of it)."""
    path = tmp_path / "outside"
    path.mkdir()
    return path, {"GIT_CEILING_DIRECTORIES": str(tmp_path)}


# ------------------------------------------------------------------------------- help


def test_root_help_lists_the_user_commands(tmp_path: Path) -> None:
    commands = [
        "  add        Stage checkpoints: `git add` with the same paths and options.",
        "  install    Register git-theta's drivers in git config.",
        "  ls-files   List checkpoints in the index stored by git-theta.",
        "  track      Store files matching PATTERNS with git-theta.",
        "  uninstall  Remove exactly what `git theta install` added to git config.",
        "  untrack    Stop storing files matching PATTERNS with git-theta.",
    ]
    # `git theta --help` is turned by git itself into `git help theta` (a man page), so the
    # help of the program is reached as `git-theta --help` or `git theta -h`.
    for argv in (["git-theta", "--help"], ["git", "theta", "-h"]):
        code, out, err = text(run(*argv, cwd=tmp_path))
        assert (code, err) == (0, ""), argv
        lines = out.splitlines()
        assert lines[0] == "Usage: git theta [OPTIONS] COMMAND [ARGS]..."
        assert "  Version machine-learning checkpoints with git, tensor by tensor." in lines
        assert "  --version   Show the version and exit." in lines
        listed = out.split("\nCommands:\n")[1].splitlines()
        assert [line for line in listed if line in commands] == commands
        # The commands git runs itself are hidden.
        assert not [line for line in listed if line.split()[0] in HIDDEN], listed


@pytest.mark.parametrize(
    ("command", "usage", "purpose"),
    [
        (
            "install",
            "[OPTIONS]",
            "Register git-theta's drivers in git config.",
        ),
        ("uninstall", "[OPTIONS]", "Remove exactly what `git theta install` added to git config."),
        ("track", "[OPTIONS] PATTERNS...", "Store files matching PATTERNS with git-theta."),
        (
            "untrack",
            "[OPTIONS] PATTERNS...",
            "Stop storing files matching PATTERNS with git-theta.",
        ),
        (
            "add",
            "[OPTIONS] ARGS...",
            "Stage checkpoints: `git add` with the same paths and options.",
        ),
        ("ls-files", "[OPTIONS]", "List checkpoints in the index stored by git-theta."),
    ],
)
def test_command_help(tmp_path: Path, command: str, usage: str, purpose: str) -> None:
    code, out, err = text(run("git", "theta", command, "--help", cwd=tmp_path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Usage: git theta {command} {usage}"
    assert lines[2] == f"  {purpose}"
    assert "  -h, --help  Show this message and exit." in lines
    if command in ("install", "uninstall"):
        assert "  --global    The user's git config (~/.gitconfig). The default." in lines
        assert "  --local     This repository's git config (.git/config)." in lines


def test_version(tmp_path: Path) -> None:
    assert text(run("git", "theta", "--version", cwd=tmp_path)) == (
        0,
        "git-theta, version 0.1.0\n",
        "",
    )


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    # The hint must name a help that works: `git theta --help` is rewritten by git into
    # `git help theta`, which looks for a man page and fails ("No manual entry for git-theta").
    assert text(run("git", "theta", "bogus", cwd=tmp_path)) == (
        2,
        "",
        "Usage: git theta [OPTIONS] COMMAND [ARGS]...\n"
        "Try 'git theta -h' for help.\n"
        "\n"
        "Error: No such command 'bogus'.\n",
    )


def test_unknown_option_of_a_command_is_a_usage_error(tmp_path: Path) -> None:
    assert text(run("git", "theta", "install", "--bogus", cwd=tmp_path)) == (
        2,
        "",
        "Usage: git theta install [OPTIONS]\n"
        "Try 'git theta install --help' for help.\n"
        "\n"
        "Error: No such option '--bogus'.\n",
    )


# ------------------------------------------------------------------- install / uninstall


def test_install_global_writes_the_filter_keys_once(tmp_path: Path) -> None:
    # The default scope is --global; installing again changes nothing (no duplicate keys).
    for flags in ([], ["--global"]):
        assert text(run("git", "theta", "install", *flags, cwd=tmp_path)) == (
            0,
            "",
            INSTALLED.format(scope="global"),
        )
        for key, value in CONFIG_KEYS.items():
            got = run("git", "config", "--global", "--get-all", key, cwd=tmp_path)
            assert text(got) == (0, value + "\n", ""), key
        assert global_list(tmp_path) == BASE_GLOBAL + [f"{k}={v}" for k, v in CONFIG_KEYS.items()]


def hook_line(repo: Repo, verb: str = "installed in") -> str:
    return f"git-theta: pre-push hook {verb} {os.path.realpath(repo.path)}/.git/hooks\n"


def test_install_local_writes_only_the_repository_config(
    bare_repo: Repo, isolated_git: Path
) -> None:
    before = gitconfig(isolated_git)
    assert text(run("git", "theta", "install", "--local", cwd=bare_repo.path)) == (
        0,
        "",
        INSTALLED.format(scope="local") + hook_line(bare_repo),
    )
    for key, value in FILTER_KEYS.items():
        assert bare_repo.git("config", "--local", "--get", key).stdout == value + "\n"
    assert gitconfig(isolated_git) == before
    other = run("git", "config", "--global", "--get-regexp", r"^filter\.", cwd=bare_repo.path)
    assert text(other) == (1, "", "")


def test_install_local_from_a_subdirectory(bare_repo: Repo) -> None:
    sub = bare_repo.path / "sub"
    sub.mkdir()
    assert run("git", "theta", "install", "--local", cwd=sub).returncode == 0
    assert bare_repo.git("config", "--local", "--get", "filter.theta.process").stdout == (
        "git-theta filter-process\n"
    )


def test_uninstall_removes_exactly_the_installed_keys(tmp_path: Path, isolated_git: Path) -> None:
    run("git", "config", "--global", "filter.theta.foo", "bar", cwd=tmp_path)
    assert run("git", "theta", "install", cwd=tmp_path).returncode == 0
    assert text(run("git", "theta", "uninstall", cwd=tmp_path)) == (
        0,
        "",
        "git-theta uninstalled (global config: removed filter.theta.process, "
        "filter.theta.clean, filter.theta.smudge, filter.theta.required, merge.theta.name, merge.theta.driver, merge.theta.recursive, diff.theta.command, diff.theta.textconv, diff.theta.cachetextconv)\n",
    )
    # The unrelated key keeps the [filter "theta"] section (and itself) alive.
    assert global_list(tmp_path) == BASE_GLOBAL + ["filter.theta.foo=bar"]
    assert gitconfig(isolated_git).endswith('[filter "theta"]\n\tfoo = bar\n')


def test_install_then_uninstall_restores_the_file_byte_for_byte(
    tmp_path: Path, isolated_git: Path
) -> None:
    before = gitconfig(isolated_git)
    assert run("git", "theta", "install", cwd=tmp_path).returncode == 0
    assert gitconfig(isolated_git) != before
    assert run("git", "theta", "uninstall", cwd=tmp_path).returncode == 0
    # No empty `[filter "theta"]` header is left behind.
    assert gitconfig(isolated_git) == before


def test_uninstall_leaves_a_changed_key_alone(tmp_path: Path) -> None:
    assert run("git", "theta", "install", cwd=tmp_path).returncode == 0
    run("git", "config", "--global", "filter.theta.clean", "my-clean %f", cwd=tmp_path)
    assert text(run("git", "theta", "uninstall", cwd=tmp_path)) == (
        0,
        "",
        "git-theta uninstalled (global config: removed filter.theta.process, "
        "filter.theta.smudge, filter.theta.required, merge.theta.name, merge.theta.driver, merge.theta.recursive, diff.theta.command, diff.theta.textconv, diff.theta.cachetextconv)\n",
    )
    assert global_list(tmp_path) == BASE_GLOBAL + ["filter.theta.clean=my-clean %f"]


def test_uninstall_when_not_installed(tmp_path: Path, isolated_git: Path) -> None:
    before = gitconfig(isolated_git)
    assert text(run("git", "theta", "uninstall", cwd=tmp_path)) == (
        0,
        "",
        "git-theta was not installed in global config; nothing removed\n",
    )
    assert gitconfig(isolated_git) == before


def test_uninstall_local_restores_the_repository_config(
    bare_repo: Repo, isolated_git: Path
) -> None:
    config = bare_repo.path / ".git" / "config"
    before, global_before = config.read_text(), gitconfig(isolated_git)
    assert run("git", "theta", "install", "--local", cwd=bare_repo.path).returncode == 0
    assert text(run("git", "theta", "uninstall", "--local", cwd=bare_repo.path)) == (
        0,
        "",
        hook_line(bare_repo, "removed from")
        + "git-theta uninstalled (local config: removed filter.theta.process, "
        "filter.theta.clean, filter.theta.smudge, filter.theta.required, merge.theta.name, merge.theta.driver, merge.theta.recursive, diff.theta.command, diff.theta.textconv, diff.theta.cachetextconv)\n",
    )
    assert config.read_text() == before
    assert gitconfig(isolated_git) == global_before
    assert not (bare_repo.path / ".git" / "hooks" / "pre-push").exists()


def test_uninstall_local_keeps_the_hook_while_a_global_install_remains(
    bare_repo: Repo, tmp_path: Path
) -> None:
    # The global filter still stores this repository's checkpoints as LFS objects, so the
    # pre-push hook that uploads them must stay (DESIGN 5: no push may leave objects behind).
    assert run("git", "theta", "install", "--global", cwd=tmp_path).returncode == 0
    assert run("git", "theta", "install", "--local", cwd=bare_repo.path).returncode == 0
    assert text(run("git", "theta", "uninstall", "--local", cwd=bare_repo.path)) == (
        0,
        "",
        "git-theta uninstalled (local config: removed filter.theta.process, "
        "filter.theta.clean, filter.theta.smudge, filter.theta.required, merge.theta.name, merge.theta.driver, merge.theta.recursive, diff.theta.command, diff.theta.textconv, diff.theta.cachetextconv)\n",
    )
    assert bare_repo.git("config", "--get", "filter.theta.process").stdout == (
        "git-theta filter-process\n"
    )
    hook = bare_repo.path / ".git" / "hooks" / "pre-push"
    assert "# git-theta pre-push hook" in hook.read_text()


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_local_scope_outside_a_repository(
    outside: tuple[Path, dict[str, str]], isolated_git: Path, command: str
) -> None:
    path, env = outside
    before = gitconfig(isolated_git)
    assert text(run("git", "theta", command, "--local", cwd=path, env=env)) == (
        1,
        "",
        f"git-theta: error: {os.path.realpath(path)} is not inside a git repository: "
        "run `git init` first\n",
    )
    assert gitconfig(isolated_git) == before


@pytest.mark.parametrize("scope", ["--global", "--local"])
def test_install_refuses_without_git_lfs(
    bare_repo: Repo, tmp_path: Path, isolated_git: Path, scope: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = shutil.which("git")
    assert git is not None
    (bin_dir / "git").symlink_to(os.path.realpath(git))
    env = {"PATH": str(bin_dir)}
    # The PATH really finds git and really lacks git-lfs.
    assert run("git", "--version", cwd=bare_repo.path, env=env).returncode == 0
    assert run("git", "lfs", "version", cwd=bare_repo.path, env=env).returncode != 0

    global_before = gitconfig(isolated_git)
    local_before = (bare_repo.path / ".git" / "config").read_text()
    proc = run(sys.executable, "-m", "git_theta", "install", scope, cwd=bare_repo.path, env=env)
    assert text(proc) == (1, "", LFS_MISSING)
    assert gitconfig(isolated_git) == global_before
    assert (bare_repo.path / ".git" / "config").read_text() == local_before


# ------------------------------------------------------------------------ track / untrack


def test_track_writes_the_attributes_line(installed: Repo) -> None:
    repo = installed
    assert text(run("git", "theta", "track", "model.pt", cwd=repo.path)) == (
        0,
        "",
        "git-theta: tracking 'model.pt'\n",
    )
    assert (repo.path / ".gitattributes").read_text() == f"model.pt {THETA_ATTRS}\n"
    assert text(run("git", "theta", "track", "*.safetensors", cwd=repo.path)) == (
        0,
        "",
        "git-theta: tracking '*.safetensors'\n",
    )
    assert (repo.path / ".gitattributes").read_text() == (
        f"model.pt {THETA_ATTRS}\n*.safetensors {THETA_ATTRS}\n"
    )
    assert attrs_of(repo, "model.pt", "x.safetensors", "other.pt") == (
        "model.pt: filter: theta\nx.safetensors: filter: theta\nother.pt: filter: unspecified\n"
    )


def test_track_lists_the_files_it_now_covers(tracked: Repo, checkpoint: bytes) -> None:
    repo = tracked
    (repo.path / "b.pt").write_bytes(checkpoint)
    (repo.path / "a.pt").write_bytes(checkpoint)
    (repo.path / "notes.txt").write_text("notes\n")
    assert text(run("git", "theta", "track", "*.pt", cwd=repo.path)) == (
        0,
        "",
        "git-theta: tracking '*.pt'\n"
        "git-theta: files now stored with git-theta: a.pt, b.pt\n"
        "git-theta: run `git add .gitattributes a.pt b.pt` to stage them\n",
    )


def test_track_again_does_not_duplicate(tracked: Repo) -> None:
    repo = tracked
    before = (repo.path / ".gitattributes").read_text()
    assert text(run("git", "theta", "track", "model.pt", cwd=repo.path)) == (
        0,
        "",
        "git-theta: 'model.pt' is already tracked\n",
    )
    assert (repo.path / ".gitattributes").read_text() == before


def test_track_recognises_its_line_whatever_the_whitespace(tracked: Repo) -> None:
    # git splits attribute lines on any run of blanks: an aligned or tab-separated line is
    # the same line, and tracking the pattern again must not add a second one.
    repo = tracked
    attributes = repo.path / ".gitattributes"
    attributes.write_text("*.txt\ttext\nmodel.pt\tfilter=theta  diff=theta merge=theta -text\n")
    before = attributes.read_text()
    assert attrs_of(repo, "model.pt") == "model.pt: filter: theta\n"
    assert text(run("git", "theta", "track", "model.pt", cwd=repo.path)) == (
        0,
        "",
        "git-theta: 'model.pt' is already tracked\n",
    )
    assert attributes.read_text() == before


def test_track_several_patterns_some_already_tracked(tracked: Repo) -> None:
    repo = tracked
    assert text(run("git", "theta", "track", "a.pt", "model.pt", "b.pt", cwd=repo.path)) == (
        0,
        "",
        "git-theta: tracking 'a.pt'\n"
        "git-theta: tracking 'b.pt'\n"
        "git-theta: 'model.pt' is already tracked\n",
    )
    assert (repo.path / ".gitattributes").read_text() == (
        f"model.pt {THETA_ATTRS}\na.pt {THETA_ATTRS}\nb.pt {THETA_ATTRS}\n"
    )


def test_track_from_a_subdirectory_is_anchored_there(tracked: Repo) -> None:
    repo = tracked
    sub = repo.path / "sub"
    sub.mkdir()
    assert text(run("git", "theta", "track", "*.pt", cwd=sub)) == (
        0,
        "",
        "git-theta: tracking '/sub/*.pt'\n",
    )
    assert (repo.path / ".gitattributes").read_text() == (
        f"model.pt {THETA_ATTRS}\n/sub/*.pt {THETA_ATTRS}\n"
    )
    assert not (sub / ".gitattributes").exists()
    assert attrs_of(repo, "sub/a.pt", "a.pt", "other/sub/a.pt") == (
        "sub/a.pt: filter: theta\na.pt: filter: unspecified\nother/sub/a.pt: filter: unspecified\n"
    )
    # Tracking it again from the same place is recognised as the same pattern.
    before = (repo.path / ".gitattributes").read_text()
    assert text(run("git", "theta", "track", "*.pt", cwd=sub)) == (
        0,
        "",
        "git-theta: '/sub/*.pt' is already tracked\n",
    )
    assert (repo.path / ".gitattributes").read_text() == before


def test_track_from_a_subdirectory_with_a_path_pattern(tracked: Repo) -> None:
    repo = tracked
    sub = repo.path / "sub"
    sub.mkdir()
    assert run("git", "theta", "track", "ckpt/*.safetensors", cwd=sub).returncode == 0
    assert (repo.path / ".gitattributes").read_text().splitlines()[-1] == (
        f"/sub/ckpt/*.safetensors {THETA_ATTRS}"
    )
    assert attrs_of(repo, "sub/ckpt/x.safetensors", "ckpt/x.safetensors") == (
        "sub/ckpt/x.safetensors: filter: theta\nckpt/x.safetensors: filter: unspecified\n"
    )


@pytest.mark.parametrize("pattern", ["a b.pt", "#model.pt", "!model.pt", ""])
def test_track_refuses_patterns_gitattributes_cannot_hold(bare_repo: Repo, pattern: str) -> None:
    assert text(run("git", "theta", "track", pattern, cwd=bare_repo.path)) == (
        2,
        "",
        BAD_PATTERN.format(pattern=pattern),
    )
    assert not (bare_repo.path / ".gitattributes").exists()


def test_track_writes_nothing_when_one_pattern_is_refused(tracked: Repo) -> None:
    repo = tracked
    before = (repo.path / ".gitattributes").read_text()
    assert text(run("git", "theta", "track", "good.pt", "bad one.pt", cwd=repo.path)) == (
        2,
        "",
        BAD_PATTERN.format(pattern="bad one.pt"),
    )
    assert (repo.path / ".gitattributes").read_text() == before


def test_track_glob_follows_git_rules(tracked: Repo) -> None:
    repo = tracked
    assert run("git", "theta", "track", "*.safetensors", cwd=repo.path).returncode == 0
    assert attrs_of(
        repo,
        "x.safetensors",
        "dir/x.safetensors",
        "dir/deep/x.safetensors",
        "x.safetensors.bak",
        "dir/model.pt",
    ) == (
        "x.safetensors: filter: theta\n"
        "dir/x.safetensors: filter: theta\n"
        "dir/deep/x.safetensors: filter: theta\n"
        "x.safetensors.bak: filter: unspecified\n"
        "dir/model.pt: filter: theta\n"  # a slash-less pattern matches at any depth
    )


def test_track_warns_when_git_theta_is_not_installed(bare_repo: Repo) -> None:
    assert text(run("git", "theta", "track", "model.pt", cwd=bare_repo.path)) == (
        0,
        "",
        "git-theta: tracking 'model.pt'\n" + NOT_INSTALLED_WARNING,
    )
    assert (bare_repo.path / ".gitattributes").read_text() == f"model.pt {THETA_ATTRS}\n"


def test_track_does_not_warn_under_a_global_install(bare_repo: Repo) -> None:
    for key, value in FILTER_KEYS.items():
        bare_repo.git("config", "--global", key, value)
    assert text(run("git", "theta", "track", "model.pt", cwd=bare_repo.path)) == (
        0,
        "",
        "git-theta: tracking 'model.pt'\n",
    )


def test_track_preserves_existing_attributes(bare_repo: Repo) -> None:
    attributes = bare_repo.path / ".gitattributes"
    attributes.write_text("# mine\n*.txt text\n\n*.bin binary")  # no trailing newline
    assert run("git", "theta", "track", "model.pt", cwd=bare_repo.path).returncode == 0
    assert attributes.read_text() == (
        f"# mine\n*.txt text\n\n*.bin binary\nmodel.pt {THETA_ATTRS}\n"
    )
    assert attrs_of(bare_repo, "model.pt") == "model.pt: filter: theta\n"
    assert bare_repo.git("check-attr", "text", "--", "a.txt").stdout == "a.txt: text: set\n"


def test_track_outside_a_repository(outside: tuple[Path, dict[str, str]]) -> None:
    path, env = outside
    assert text(run("git", "theta", "track", "model.pt", cwd=path, env=env)) == (
        1,
        "",
        f"git-theta: error: {os.path.realpath(path)} is not inside a git repository: "
        "run `git init` first\n",
    )


def test_untrack_removes_only_that_line(tracked: Repo) -> None:
    repo = tracked
    attributes = repo.path / ".gitattributes"
    attributes.write_text(
        f"*.txt text\nmodel.pt {THETA_ATTRS}\nmodel.pt diff=custom\nother.pt {THETA_ATTRS}\n"
    )
    assert text(run("git", "theta", "untrack", "model.pt", cwd=repo.path)) == (
        0,
        "",
        "git-theta: untracked 'model.pt'\n",
    )
    assert attributes.read_text() == f"*.txt text\nmodel.pt diff=custom\nother.pt {THETA_ATTRS}\n"
    assert attrs_of(repo, "model.pt", "other.pt") == (
        "model.pt: filter: unspecified\nother.pt: filter: theta\n"
    )


def test_untrack_from_a_subdirectory(tracked: Repo) -> None:
    repo = tracked
    sub = repo.path / "sub"
    sub.mkdir()
    assert run("git", "theta", "track", "*.pt", cwd=sub).returncode == 0
    assert text(run("git", "theta", "untrack", "*.pt", cwd=sub)) == (
        0,
        "",
        "git-theta: untracked '/sub/*.pt'\n",
    )
    assert (repo.path / ".gitattributes").read_text() == f"model.pt {THETA_ATTRS}\n"


def test_untrack_a_pattern_not_tracked(tracked: Repo) -> None:
    repo = tracked
    attributes = repo.path / ".gitattributes"
    before = attributes.read_text()
    top = os.path.realpath(repo.path)
    # Nothing is written, not even the removal of a pattern given before the unknown one.
    assert text(run("git", "theta", "untrack", "model.pt", "nope.pt", cwd=repo.path)) == (
        2,
        "",
        f"git-theta: error: 'nope.pt' is not tracked by git-theta in {top}/.gitattributes\n",
    )
    assert attributes.read_text() == before


def test_untrack_without_an_attributes_file(bare_repo: Repo) -> None:
    top = os.path.realpath(bare_repo.path)
    assert text(run("git", "theta", "untrack", "model.pt", cwd=bare_repo.path)) == (
        2,
        "",
        f"git-theta: error: 'model.pt' is not tracked by git-theta in {top}/.gitattributes\n",
    )
    assert not (bare_repo.path / ".gitattributes").exists()


# ------------------------------------------------------------------------------------ add


def test_add_stages_the_manifest(tracked: Repo, checkpoint: bytes) -> None:
    repo = tracked
    (repo.path / "model.pt").write_bytes(checkpoint)
    assert text(run("git", "theta", "add", "model.pt", cwd=repo.path)) == (0, "", "")
    blob = repo.blob(":model.pt")
    assert blob.startswith(b"{")
    assert json.loads(blob)["git_theta"] == 3
    assert repo.status() == "A  model.pt\n"


def test_add_passes_git_options_through(tracked: Repo, checkpoint: bytes) -> None:
    repo = tracked
    (repo.path / "model.pt").write_bytes(checkpoint)
    assert text(run("git", "theta", "add", "-v", "model.pt", cwd=repo.path)) == (
        0,
        "add 'model.pt'\n",
        "",
    )
    assert repo.status() == "A  model.pt\n"


def test_add_dry_run_stages_nothing(tracked: Repo, checkpoint: bytes) -> None:
    repo = tracked
    (repo.path / "model.pt").write_bytes(checkpoint)
    assert text(run("git", "theta", "add", "--dry-run", "model.pt", cwd=repo.path)) == (
        0,
        "add 'model.pt'\n",
        "",
    )
    assert repo.status() == "?? model.pt\n"


def test_add_passes_double_dash_through(tracked: Repo, checkpoint: bytes) -> None:
    repo = tracked
    # "Everything after `add` is passed to `git add` unchanged": `--` included, so a path
    # that starts with a dash can be staged.
    assert run("git", "theta", "track", "*.pt", cwd=repo.path).returncode == 0
    (repo.path / "-odd.pt").write_bytes(checkpoint)
    assert text(run("git", "theta", "add", "-v", "--", "-odd.pt", cwd=repo.path)) == (
        0,
        "add '-odd.pt'\n",
        "",
    )
    assert repo.blob(":-odd.pt").startswith(b"{")


def test_add_missing_path_exits_with_gits_code(tracked: Repo) -> None:
    repo = tracked
    assert text(run("git", "theta", "add", "nope.pt", cwd=repo.path)) == (
        128,
        "",
        "fatal: pathspec 'nope.pt' did not match any files\n",
    )


# ------------------------------------------------------------------------------- ls-files


def test_ls_files_reports_a_committed_checkpoint(tracked: Repo, checkpoint: bytes) -> None:
    repo = tracked
    (repo.path / "model.pt").write_bytes(checkpoint)
    (repo.path / "notes.txt").write_text("not tracked by git-theta\n")
    repo.git("add", "model.pt", "notes.txt")
    repo.git("commit", "-q", "-m", "checkpoint")
    assert len(repo.objects()) == 2
    expected = f"{2:>8} {LOGICAL_SIZE:>10} {human(store_size(repo)):>10}  model.pt\n"
    assert text(run("git", "theta", "ls-files", cwd=repo.path)) == (0, expected, "")
    sub = repo.path / "sub"
    sub.mkdir()
    assert text(run("git", "theta", "ls-files", cwd=sub)) == (0, expected, "")


def test_ls_files_flags_a_checkpoint_stored_without_git_theta(
    tracked: Repo, checkpoint: bytes
) -> None:
    repo = tracked
    (repo.path / "model.pt").write_bytes(checkpoint)
    # An empty `process` with `required=false` makes git store the raw bytes (as it does
    # for a repository where git-theta was never installed).
    repo.git("-c", "filter.theta.process=", "-c", "filter.theta.required=false", "add", "model.pt")
    repo.git("commit", "-q", "-m", "raw")
    assert repo.blob(":model.pt") == checkpoint
    assert text(run("git", "theta", "ls-files", cwd=repo.path)) == (
        0,
        f"{'-':>8} {'-':>10} {'-':>10}  model.pt  "
        "(stored without git-theta (run `git add --renormalize`))\n",
        "",
    )
    # The fix it names works.
    repo.git("add", "--renormalize", "model.pt")
    assert text(run("git", "theta", "ls-files", cwd=repo.path)) == (
        0,
        f"{2:>8} {LOGICAL_SIZE:>10} {human(store_size(repo)):>10}  model.pt\n",
        "",
    )


def test_ls_files_in_an_empty_repository(bare_repo: Repo) -> None:
    assert text(run("git", "theta", "ls-files", cwd=bare_repo.path)) == (0, "", "")


# ---------------------------------------------------------------------- one-shot filters


@pytest.mark.parametrize(
    ("args", "data", "name"),
    [
        (["notes.pt"], b"hello, not a checkpoint\n", "notes.pt"),
        ([], b"hello, not a checkpoint\n", "<stdin>"),
        (["notes.pt"], b"", "notes.pt"),
    ],
    ids=["named", "stdin", "empty"],
)
def test_clean_of_text_in_no_checkpoint_format_keeps_it_as_text(
    tracked: Repo, args: list[str], data: bytes, name: str
) -> None:
    repo = tracked
    proc = run("git-theta", "clean", *args, cwd=repo.path, input=data)
    note = f"git-theta: {name} is in no checkpoint format: kept in git as text\n"
    assert (proc.returncode, proc.stdout, proc.stderr.decode()) == (0, data, note)
    assert repo.objects() == set()


def test_clean_of_a_truncated_checkpoint_fails_with_one_line(
    tracked: Repo, checkpoint: bytes
) -> None:
    proc = run("git-theta", "clean", "model.pt", cwd=tracked.path, input=checkpoint[:100])
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().startswith(
        "git-theta: error: model.pt: not a checkpoint git-theta can read: truncated or corrupt"
    )
    assert proc.stderr.count(b"\n") == 1


def test_clean_stdout_is_exactly_the_manifest_and_smudge_rebuilds(
    tracked: Repo, checkpoint: bytes
) -> None:
    import torch

    repo = tracked
    proc = run("git-theta", "clean", "model.pt", cwd=repo.path, input=checkpoint)
    assert (proc.returncode, proc.stderr) == (0, b"")
    # The same bytes the long-running filter gives git, and nothing else.
    (repo.path / "model.pt").write_bytes(checkpoint)
    repo.git("add", "model.pt")
    assert proc.stdout == repo.blob(":model.pt")
    manifest = json.loads(proc.stdout)
    assert sorted(manifest["tensors"]) == ["b", "w"]
    assert proc.stdout.endswith(b"}\n")

    back = run("git-theta", "smudge", "model.pt", cwd=repo.path, input=proc.stdout)
    assert (back.returncode, back.stderr) == (0, b"")
    got = torch.load(io.BytesIO(back.stdout), weights_only=True)
    want = torch.load(io.BytesIO(checkpoint), weights_only=True)
    assert list(got) == ["w", "b"]
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_smudge_passes_other_content_through(tracked: Repo) -> None:
    repo = tracked
    data = b"\x00\x01 not a manifest \r\n\xff\xfe{git_theta}\n"
    proc = run("git-theta", "smudge", "model.pt", cwd=repo.path, input=data)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, data, b"")


def test_one_shot_filters_through_git(tracked: Repo, checkpoint: bytes) -> None:
    import torch

    repo = tracked
    # Without `process`, git runs `git-theta clean %f` / `git-theta smudge %f` per file.
    repo.git("config", "--local", "--unset", "filter.theta.process")
    (repo.path / "model.pt").write_bytes(checkpoint)
    assert text(run("git", "add", "model.pt", cwd=repo.path)) == (0, "", "")
    manifest = json.loads(repo.blob(":model.pt"))
    assert (manifest["git_theta"], sorted(manifest["tensors"])) == (3, ["b", "w"])
    repo.git("commit", "-q", "-m", "one-shot")
    (repo.path / "model.pt").unlink()
    assert text(run("git", "checkout", "--", "model.pt", cwd=repo.path)) == (0, "", "")
    got = torch.load(repo.path / "model.pt", weights_only=True)
    assert torch.equal(got["w"], torch.arange(256, dtype=torch.float32).reshape(16, 16))
    assert repo.status() == ""


# ------------------------------------------------- filters print nothing but protocol data


def test_git_commands_through_the_filter_print_nothing_extra(
    tracked: Repo, checkpoint: bytes
) -> None:
    repo = tracked
    env = {"GIT_TRACE": "0"}
    (repo.path / "model.pt").write_bytes(checkpoint)
    assert text(run("git", "add", "model.pt", cwd=repo.path, env=env)) == (0, "", "")
    assert text(run("git", "commit", "-q", "-m", "ckpt", cwd=repo.path, env=env)) == (0, "", "")
    (repo.path / "model.pt").unlink()
    assert text(run("git", "checkout", "--", "model.pt", cwd=repo.path, env=env)) == (0, "", "")
    assert text(run("git", "status", "--porcelain", cwd=repo.path, env=env)) == (0, "", "")


def test_process_filter_failure_is_one_line_then_gits_fatal(tracked: Repo) -> None:
    repo = tracked
    (repo.path / "model.pt").write_bytes(b"PK\x03\x04 cut short")  # a torch zip's start
    assert text(run("git", "add", "model.pt", cwd=repo.path, env={"GIT_TRACE": "0"})) == (
        128,
        "",
        "git-theta: error: model.pt: not a checkpoint git-theta can read: truncated or corrupt "
        "PyTorch zip archive (File is not a zip file)\n"
        "fatal: model.pt: clean filter 'theta' failed\n",
    )
    assert repo.status() == "?? model.pt\n"
    assert repo.objects() == set()
