"""The history scanner finds manifests wherever the repository keeps them: in commits a
push sends, in revisions' trees, in stash entries, in other worktrees' indexes, in reflog
entries of deleted branches and in conflicted (unmerged) index entries. Real git, real
manifests made by git-theta's filter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from git_theta.gitio import scan
from tests.helpers import Repo, seeded_state_dict


def _save(repo: Repo, seed: int, name: str = "model.pt") -> None:
    torch.save(seeded_state_dict(2, 8, seed=seed), repo.path / name)


def _commit(repo: Repo, seed: int, message: str) -> str:
    """Commit a checkpoint of ``seed``; returns its manifest's blob id."""
    _save(repo, seed)
    repo.commit_file("model.pt", message)
    return repo.git("rev-parse", "HEAD:model.pt").stdout.strip()


def _staged_blob(repo: Repo, path: str = "model.pt") -> str:
    return repo.git("rev-parse", f":{path}").stdout.strip()


def _all(repo: Repo, **kwargs: bool) -> dict[str, scan.Blob]:
    return {b.blob: b for b in scan.scan_all(repo.path, **kwargs)}


def _head_tree(repo: Repo) -> set[str]:
    return {b.blob for b in scan.scan_trees(repo.path, ["HEAD"])}


def test_scan_all_finds_every_committed_version(repo: Repo) -> None:
    blobs = [_commit(repo, seed, f"v{seed}") for seed in range(3)]
    found = _all(repo)
    assert set(found) == set(blobs)  # .gitattributes is no git-theta path
    assert all(b.data.startswith(b"{") and b'"git_theta"' in b.data for b in found.values())
    assert found[blobs[2]].path == "model.pt"
    # also in the index: a commit that has it names it (history is read before the indexes)
    assert found[blobs[2]].index_of is None
    assert found[blobs[2]].commit == repo.git("rev-parse", "HEAD").stdout.strip()
    assert found[blobs[0]].commit == repo.git("rev-parse", "HEAD~2").stdout.strip()
    assert found[blobs[0]].where == f"model.pt in {found[blobs[0]].commit[:10]}"


def test_scan_finds_a_stash_entry(repo: Repo) -> None:
    _commit(repo, 0, "v1")
    _save(repo, 1)
    repo.git("add", "model.pt")
    older = _staged_blob(repo)
    repo.git("stash", "-q")
    _save(repo, 2)
    repo.git("stash", "-q")  # the first entry is now stash@{1}: only the stash reflog names it
    newer = repo.git("rev-parse", "stash@{0}:model.pt").stdout.strip()
    assert repo.git("rev-parse", "stash@{1}:model.pt").stdout.strip() == older
    assert repo.status() == ""
    found = _all(repo)
    assert {older, newer} <= set(found)
    assert older not in _head_tree(repo) and newer not in _head_tree(repo)
    stash_commits = set(repo.git("rev-list", "-g", "stash").stdout.split())
    stash_commits |= {repo.git("rev-parse", f"stash@{{{i}}}^2").stdout.strip() for i in (0, 1)}
    assert found[older].commit in stash_commits
    assert found[newer].commit in stash_commits


def test_scan_finds_another_worktrees_index(repo: Repo, tmp_path: Path) -> None:
    _commit(repo, 0, "v1")
    other = Repo(tmp_path / "second")
    repo.git("worktree", "add", "-q", "-b", "side", str(other.path))
    _save(other, 5)
    other.git("add", "model.pt")  # staged there, never committed
    staged = _staged_blob(other)
    found = _all(repo)
    assert staged in found
    assert found[staged].index_of == other.path
    assert found[staged].commit == ""
    assert found[staged].where == f"model.pt in the index of {other.path}"


def test_scan_finds_a_deleted_branchs_commit_through_the_reflog(repo: Repo) -> None:
    _commit(repo, 0, "v1")
    repo.git("switch", "-q", "-c", "feature")
    lost = _commit(repo, 7, "on a branch about to be deleted")
    commit = repo.git("rev-parse", "HEAD").stdout.strip()
    repo.git("switch", "-q", "main")
    repo.git("branch", "-q", "-D", "feature")
    assert repo.git("branch", "--contains", commit, check=False).stdout == ""
    found = _all(repo)
    assert lost in found
    assert found[lost].commit == commit


def test_scan_finds_unmerged_index_entries(repo: Repo) -> None:
    base = _commit(repo, 0, "base")
    repo.git("switch", "-q", "-c", "theirs")
    theirs = _commit(repo, 1, "theirs")
    repo.git("switch", "-q", "main")
    ours = _commit(repo, 2, "ours")
    repo.git("branch", "-q", "-D", "theirs")
    repo.git("reflog", "expire", "--expire=now", "--all")  # only the index keeps `theirs` now
    null = "0" * 40
    repo.run(
        "git",
        "update-index",
        "--index-info",
        input=(
            f"0 {null}\tmodel.pt\n"
            f"100644 {base} 1\tmodel.pt\n"
            f"100644 {ours} 2\tmodel.pt\n"
            f"100644 {theirs} 3\tmodel.pt\n"
        ).encode(),
    )
    assert "UU model.pt" in repo.status()
    found = _all(repo)
    assert {base, ours, theirs} <= set(found)
    assert found[theirs].index_of == repo.path and found[theirs].stage == 3
    assert found[theirs].where == f"model.pt in the index of {repo.path}, merge stage 3"


def test_scan_range_is_what_a_push_sends(repo: Repo) -> None:
    first = _commit(repo, 0, "v1")
    pushed = repo.git("rev-parse", "HEAD").stdout.strip()
    second = _commit(repo, 1, "v2")
    third = _commit(repo, 2, "v3")
    tip = repo.git("rev-parse", "HEAD").stdout.strip()
    found = {b.blob for b in scan.scan_range(repo.path, [tip], [pushed])}
    assert found == {second, third}
    everything = {b.blob for b in scan.scan_range(repo.path, [tip])}
    assert everything == {first, second, third}


@pytest.mark.parametrize("theta_only", [True, False])
def test_attribute_filter(repo: Repo, theta_only: bool) -> None:
    blob = _commit(repo, 0, "v1")
    repo.git("mv", "model.pt", "renamed.bin")  # the manifest at a path no pattern names
    repo.git("commit", "-q", "-m", "rename")
    tree = {b.path for b in scan.scan_trees(repo.path, ["HEAD"], theta_only=theta_only)}
    assert tree == (set() if theta_only else {"renamed.bin"})
    assert (blob in _all(repo, theta_only=theta_only)) is True  # still at model.pt in v1


def test_large_blobs_and_other_prefixes_are_skipped(repo: Repo) -> None:
    blob = _commit(repo, 0, "v1")
    assert {b.blob for b in scan.scan_all(repo.path, limit=10)} == set()
    assert {b.blob for b in scan.scan_all(repo.path, prefix=b"version ")} == set()
    assert {b.blob for b in scan.scan_all(repo.path)} == {blob}


def test_an_unknown_revision_is_a_clear_error(repo: Repo) -> None:
    from git_theta.errors import UsageError

    with pytest.raises(UsageError) as info:
        list(scan.scan_trees(repo.path, ["no-such-branch"]))
    assert str(info.value) == (
        "`no-such-branch` names no commit or tree in this repository: check the name "
        "(`git log --oneline --all` lists commits)"
    )
    proc = repo.theta("fetch", "origin", "no-such-branch", check=False)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"git-theta: error: {info.value}\n"


def test_scan_all_finds_a_manifest_only_a_merge_has_whatever_log_diff_merges_says(
    repo: Repo,
) -> None:
    base = seeded_state_dict(4, 8, seed=0)
    torch.save(base, repo.path / "model.pt")
    repo.commit_file("model.pt", "v1")
    repo.git("checkout", "-q", "-b", "other")
    torch.save({**base, "layers.0.weight": torch.zeros(8, 8)}, repo.path / "model.pt")
    repo.commit_file("model.pt", "other: layer 0")
    repo.git("checkout", "-q", "main")
    torch.save({**base, "layers.3.weight": torch.ones(8, 8)}, repo.path / "model.pt")
    repo.commit_file("model.pt", "main: layer 3")
    repo.git("merge", "-q", "--no-edit", "other")  # the manifests' text merges cleanly
    merged = repo.git("rev-parse", "HEAD:model.pt").stdout.strip()
    parents = {repo.git("rev-parse", f"HEAD^{n}:model.pt").stdout.strip() for n in (1, 2)}
    assert merged not in parents  # only the merge commit has it
    repo.git("checkout", "-q", "--detach", "HEAD^1")  # and not the index
    repo.git("config", "log.diffMerges", "combined")
    assert merged in _all(repo)
