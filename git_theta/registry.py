"""A model registry on refs: versions are annotated tags, aliases are movable tags.

``models/<name>/<version>`` (an annotated tag; the version is semantic, ``1.2.0`` or
``v1.2.0``) points at the commit holding the model and carries the checkpoint's path and
the commit's metadata as trailers. ``models/<name>/aliases/<alias>`` (``champion``,
``staging``) points at a version's tag and moves. Both are ordinary tags: ``git push``
sends them (a moved alias needs ``git theta registry push``, which forces aliases only) and
``git clone`` brings them; ``load`` from a URL fetches a model's aliases again each time, so
a moved alias is seen at the next load.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from git_theta import experiments
from git_theta.errors import UsageError
from git_theta.repo import Repo

PREFIX = "refs/tags/models"
_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    commit: str
    path: str
    metadata: dict[str, Any]
    aliases: list[str] = field(default_factory=list)


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or name.endswith(".lock") or ".." in name:
        raise UsageError(f"{what} `{name}` is not a valid name: use letters, digits, `.`, `_`, `-`")


def _check_version(version: str) -> None:
    if not _SEMVER.match(version):
        raise UsageError(f"version `{version}` is not semantic (MAJOR.MINOR.PATCH, e.g. 1.2.0)")


def _semver_key(version: str) -> tuple[int, int, int, int, str]:
    match = _SEMVER.match(version)
    assert match is not None
    pre = version.split("+", 1)[0].partition("-")[2]
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch, 0 if pre else 1, pre


def _theta_file(repo: Repo, commit: str) -> str:
    """The one git-theta checkpoint in ``commit``'s tree (else: name it with --path)."""
    from git_theta.gitio import git
    from git_theta.gitio.scan import tree_files
    from git_theta.manifest import looks_like_manifest

    files = tree_files(repo.top, commit)
    by_blob: dict[str, list[str]] = {}
    for path, blob in files.items():
        by_blob.setdefault(blob, []).append(path)
    found = sorted(
        path
        for blob, data in git.blobs_starting_with(sorted(by_blob), b"{", repo.top)
        if looks_like_manifest(data)
        for path in by_blob[blob]
    )
    if len(found) != 1:
        listed = ", ".join(f"`{p}`" for p in found[:5]) or "none"
        raise UsageError(
            f"{commit[:12]} holds {len(found)} git-theta checkpoints ({listed}): name one with "
            "--path"
        )
    return found[0]


def register(
    repo: Repo, name: str, version: str, rev: str = "HEAD", path: str | None = None
) -> Version:
    """Tag ``rev`` as ``version`` of model ``name``; an existing version is refused."""
    _check_name(name, "model")
    _check_version(version)
    ref = f"{PREFIX}/{name}/{version}"
    if repo.git(["rev-parse", "--verify", "--quiet", ref], check=False).returncode == 0:
        raise UsageError(
            f"model `{name}` already has version {version}: register a new version instead"
        )
    proc = repo.git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], check=False)
    if proc.returncode != 0:
        raise UsageError(f"revision `{rev}` is not a commit here")
    commit = proc.stdout.decode().strip()
    path = path or _theta_file(repo, commit)
    if repo.git(["cat-file", "-e", f"{commit}:{path}"], check=False).returncode != 0:
        raise UsageError(f"`{path}` is not in {commit[:12]}")
    body = repo.git(["log", "-1", "--format=%B", commit]).stdout.decode(errors="replace")
    metadata = experiments.parse_trailers(body)
    message = (
        f"model {name} {version}\n\n"
        + experiments.trailers({"path": path, **{f"commit.{k}": v for k, v in metadata.items()}})
        + "\n"
    )
    repo.git(["tag", "-a", "-F", "-", f"models/{name}/{version}", commit], input=message.encode())
    return Version(name, version, commit, path, metadata)


def alias(repo: Repo, name: str, alias_name: str, version: str) -> None:
    """Point ``alias_name`` of model ``name`` at ``version`` (made or moved)."""
    _check_name(name, "model")
    _check_name(alias_name, "alias")
    if _SEMVER.match(alias_name):
        raise UsageError(f"alias `{alias_name}` looks like a version: name it otherwise")
    target = f"{PREFIX}/{name}/{version}"
    proc = repo.git(["rev-parse", "--verify", "--quiet", target], check=False)
    if proc.returncode != 0:
        raise UsageError(f"model `{name}` has no version {version}: register it first")
    repo.git(["update-ref", f"{PREFIX}/{name}/aliases/{alias_name}", proc.stdout.decode().strip()])


def _read_tag(repo: Repo, tag_object: str) -> tuple[str, str, dict[str, Any]]:
    """(version, commit, tag metadata) of a version tag object."""
    text = repo.git(["cat-file", "tag", tag_object]).stdout.decode(errors="replace")
    header, _, message = text.partition("\n\n")
    fields = dict(line.split(" ", 1) for line in header.splitlines() if " " in line)
    version = fields.get("tag", "").rsplit("/", 1)[-1]
    return version, fields.get("object", ""), experiments.parse_trailers(message)


def versions(repo: Repo, name: str | None = None) -> list[Version]:
    """Registered versions (of model ``name``, or all), by model then semantic version."""
    listing = repo.git(
        ["for-each-ref", "--format=%(refname)%00%(objectname)%00%(objecttype)", PREFIX]
    ).stdout.decode()
    found: dict[tuple[str, str], Version] = {}
    aliases: dict[str, list[tuple[str, str]]] = {}
    for line in listing.splitlines():
        ref, obj, kind = line.split("\0")
        parts = ref[len(PREFIX) + 1 :].split("/")
        if name is not None and parts[0] != name:
            continue
        if len(parts) == 3 and parts[1] == "aliases":
            aliases.setdefault(obj, []).append((parts[0], parts[2]))
        elif len(parts) == 2 and kind == "tag" and _SEMVER.match(parts[1]):
            version, commit, meta = _read_tag(repo, obj)
            path = str(meta.pop("path", ""))
            found[(parts[0], obj)] = Version(parts[0], parts[1], commit, path, meta)
    result = []
    for (model, obj), item in found.items():
        named = sorted(a for m, a in aliases.get(obj, []) if m == model)
        result.append(Version(model, item.version, item.commit, item.path, item.metadata, named))
    return sorted(result, key=lambda v: (v.name, _semver_key(v.version)))


def resolve(repo: Repo, name: str, version_or_alias: str) -> Version:
    """The version ``version_or_alias`` names; a cached clone of a URL fetches the model's
    tags first (aliases every time, since they move)."""
    _check_name(name, "model")
    is_version = bool(_SEMVER.match(version_or_alias))
    ref = (
        f"{PREFIX}/{name}/{version_or_alias}"
        if is_version
        else f"{PREFIX}/{name}/aliases/{version_or_alias}"
    )
    present = repo.git(["rev-parse", "--verify", "--quiet", ref], check=False).returncode == 0
    if repo.source_url and (not is_version or not present):
        spec = f"+{PREFIX}/{name}/*:{PREFIX}/{name}/*"
        repo.git(["fetch", "-q", "--no-tags", "origin", spec], check=False)
    proc = repo.git(["rev-parse", "--verify", "--quiet", ref], check=False)
    if proc.returncode != 0:
        where = repo.source_url or str(repo.top)
        kind = "version" if is_version else "alias"
        raise UsageError(
            f"model `{name}` has no {kind} `{version_or_alias}` in {where}: "
            "`git theta registry list` shows what there is"
        )
    version, commit, meta = _read_tag(repo, proc.stdout.decode().strip())
    path = str(meta.pop("path", ""))
    return Version(name, version, commit, path, meta)


def load(
    name: str,
    version_or_alias: str,
    repo: str | os.PathLike[str] = ".",
    framework: str = "torch",
    names: list[str] | None = None,
) -> Any:
    """Model ``name`` at a version or alias, from a work tree, bare repository or URL, as
    ``git_theta.load`` gives it."""
    from git_theta import api

    found = api.repository(repo)
    version = resolve(found, name, version_or_alias)
    return api.load(version.path, rev=version.commit, names=names, repo=repo, framework=framework)


def push(repo: Repo, remote: str = "origin") -> None:
    """Send every version (never forced: a version does not change) and every alias
    (forced: aliases move), with the objects their commits need."""
    aliases = repo.git(["for-each-ref", "--format=%(refname)", PREFIX]).stdout.decode().split()
    specs = [f"+{r}:{r}" if "/aliases/" in r else f"{r}:{r}" for r in aliases]
    if not specs:
        raise UsageError("no model is registered here: `git theta registry register` one first")
    repo.git(["push", "-q", remote, *specs])
