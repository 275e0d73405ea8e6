"""``git theta fsck``: are the objects the manifests need here, whole, and do they decode to
the tensors the manifests record?

Three checks, each on every object or record once however many manifests share it: the
object is local with its recorded size; its bytes hash to its oid (hashed in full, whatever
the store remembers); each tensor decodes from its objects to its recorded identity hash.
With ``fetch``, objects that are missing or corrupt are downloaded again and checked again.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from git_theta import history, transfer, updates
from git_theta.errors import ThetaError
from git_theta.gitio import lfs
from git_theta.history import Located
from git_theta.manifest import TensorRecord
from git_theta.repo import Repo
from git_theta.store import ObjectRef
from git_theta.tensors import content_hash, identity_hash

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with where it shows: a tensor of a manifest found at ``where``."""

    where: str
    tensor: str
    what: str
    oid: str = ""  # the object at fault; "" when the objects are sound but do not decode

    def __str__(self) -> str:
        if not self.tensor:  # the manifest itself
            return f"{self.where}: {self.what}"
        return f"{self.where}: tensor `{self.tensor}`: {self.what}"


@dataclass
class Result:
    """What one fsck found."""

    manifests: int = 0
    objects: int = 0
    tensors: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # oids fetched again and now sound
    fetch_error: str = ""  # why fetching failed, when it did


@dataclass
class _Needs:
    """Who needs each object and each distinct record."""

    objects: dict[str, tuple[int, list[tuple[str, str]]]] = field(default_factory=dict)
    records: dict[TensorRecord, list[tuple[str, str]]] = field(default_factory=dict)


def _needs(located: list[Located]) -> _Needs:
    needs = _Needs()
    for item in located:
        for name, record in item.manifest.tensors.items():
            users = needs.records.setdefault(record, [])
            users.append((item.where, name))
            for obj in record.objects:
                needs.objects.setdefault(obj.oid, (obj.size, []))[1].append((item.where, name))
    return needs


def scope(
    repo: Repo, everything: bool, damaged: list[tuple[str, str]] | None = None
) -> list[Located]:
    """The manifests to check: HEAD's and the index's, or (``everything``) all that the
    repository keeps; those that do not parse go to ``damaged``."""
    if everything:
        return history.everything(repo, damaged=damaged)
    return history.current(repo, damaged)


def _decodes(repo: Repo, record: TensorRecord) -> str | None:
    """None when ``record`` decodes from its (sound) objects to its identity hash."""
    try:
        words = updates.decode(record, repo.store)
    except ThetaError as exc:
        return f"does not decode: {exc}"
    except (ValueError, OSError, MemoryError) as exc:
        return f"does not decode: {type(exc).__name__}: {exc}"
    if identity_hash(record.dtype, record.shape, words) != record.hash:
        return "decodes to data that does not match its recorded hash"
    if (
        record.blake3 is not None
        and content_hash(record.dtype, record.shape, words) != record.blake3
    ):
        return "decodes to data that does not match its recorded BLAKE3"
    return None


def _check(
    repo: Repo, needs: _Needs, only: set[str] | None, progress: Progress | None
) -> tuple[dict[str, str], list[Problem]]:
    """Check the objects (those in ``only``, when given) and the records using them;
    returns (bad oid -> what is wrong, every problem)."""
    store = repo.store
    oids = [oid for oid in needs.objects if only is None or oid in only]
    records = [r for r in needs.records if only is None or any(o.oid in only for o in r.objects)]
    threads = max(1, repo.config.threads)
    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        checked = pool.map(lambda oid: store.check(ObjectRef(oid, needs.objects[oid][0])), oids)
        for done, (oid, what) in enumerate(zip(oids, checked, strict=True), 1):
            if what is not None:
                bad[oid] = what
            if progress:
                progress("checking objects", done, len(oids))
        sound = [r for r in records if not any(o.oid in bad for o in r.objects)]
        decoded = pool.map(lambda r: _decodes(repo, r), sound)
        failed: dict[TensorRecord, str] = {}
        for done, (record, what) in enumerate(zip(sound, decoded, strict=True), 1):
            if what is not None:
                failed[record] = what
            if progress:
                progress("decoding tensors", done, len(sound))
    problems = []
    for oid, what in bad.items():
        for where, name in needs.objects[oid][1]:
            problems.append(Problem(where, name, f"object {oid[:12]}… {what}", oid))
    for record, what in failed.items():
        for where, name in needs.records[record]:
            problems.append(Problem(where, name, what))
    problems.sort(key=lambda p: (p.where, p.tensor, p.what))
    return bad, problems


def fsck(
    repo: Repo,
    everything: bool = False,
    fetch: bool = False,
    remote: str | None = None,
    progress: Progress | None = None,
) -> Result:
    """Check the objects of the manifests in scope (see ``scope``); with ``fetch``, download
    the missing and corrupt ones again from ``remote`` (default: git-lfs's) and check them
    again."""
    damaged: list[tuple[str, str]] = []
    located = scope(repo, everything, damaged)
    needs = _needs(located)
    result = Result(len(located) + len(damaged), len(needs.objects), len(needs.records))
    unreadable = [Problem(where, "", f"not a readable manifest: {what}") for where, what in damaged]
    bad, found = _check(repo, needs, None, progress)
    result.problems = sorted(unreadable + found, key=lambda p: (p.where, p.tensor, p.what))
    if not (fetch and bad):
        return result
    remote = remote or lfs.default_remote(repo.top)
    if not lfs.has_endpoint(remote, repo.top):
        result.fetch_error = (
            f"there is no remote `{remote}` (and no lfs.url) to download from: add the "
            "remote the checkpoints came from (`git remote add origin URL`) or name one "
            "with --remote"
        )
        return result
    aside: dict[str, Path] = {}
    wanted = [item for item in located if any(o in bad for o in item.manifest.objects())]
    try:
        for oid in bad:
            moved = repo.store.set_aside(oid)
            if moved is not None:
                aside[oid] = moved
        transfer.fetch_missing(repo, wanted, remote)
    except ThetaError as exc:
        result.fetch_error = str(exc)
    finally:  # also when interrupted: nothing set aside is left behind
        for oid, path in aside.items():
            repo.store.put_back(oid, path)  # dropped when a good copy came
    still, again = _check(repo, needs, set(bad), None)
    result.repaired = sorted(oid for oid in bad if oid not in still)
    kept = [p for p in result.problems if p.oid not in bad]  # decoding problems stay
    result.problems = sorted(kept + again, key=lambda p: (p.where, p.tensor, p.what))
    return result
