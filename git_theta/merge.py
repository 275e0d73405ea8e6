"""Merging checkpoints: git's merge driver for git-theta files, and ``git theta resolve``.

Three manifests in (base, ours, theirs), one out. ``threeway.plan`` decides everything a
one-sided change decides; tensors changed on both sides go to the merge method
(``methods``), which reuses one side's record or computes the merged tensor in float64 and
stores it as a new object. Anything a method cannot resolve is a conflict: the driver then
leaves our manifest (so the work tree gets our checkpoint, bit-exact) and git records the
conflict as for any file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from git_theta import methods, threeway, updates
from git_theta.errors import ManifestError, ThetaError
from git_theta.gitio import attributes
from git_theta.history import Located
from git_theta.manifest import Manifest, TensorRecord, parse_if_manifest
from git_theta.methods import Method
from git_theta.repo import Repo
from git_theta.tensors import dtype as get_dtype
from git_theta.tensors import word_dtype
from git_theta.transfer import fetch_missing

ENV = "GIT_THETA_MERGE_"


@dataclass
class Outcome:
    """A merge's result: the merged manifest, or (``conflicts``) why there is none."""

    manifest: bytes | None
    conflicts: list[str]
    method: Method
    resolved: list[str]  # tensors the method resolved


def configured_parameters(repo: Repo) -> tuple[str | None, str | None, str | None]:
    """The merge parameters (weight, lambda, density) as text, from the environment, else
    git config; raises UsageError naming the setting of a bad one."""
    texts = []
    for key in ("weight", "lambda", "density"):
        variable, setting = f"{ENV}{key.upper()}", f"theta.merge.{key}"
        text = os.environ.get(variable)
        where = variable
        if text is None:
            text, where = repo.git_config.get(setting), setting
        alone = [text if k == key else None for k in ("weight", "lambda", "density")]
        methods.parse("conflict", alone[0], alone[1], alone[2], source=where)  # names it
        texts.append(text)
    return texts[0], texts[1], texts[2]


def method_for(repo: Repo, path: str) -> Method:
    """The merge method for ``path``: ``GIT_THETA_MERGE_METHOD``, else the ``theta-merge``
    attribute of the path, else ``theta.merge.method``, else ``conflict``; parameters from
    ``GIT_THETA_MERGE_{WEIGHT,LAMBDA,DENSITY}``, else ``theta.merge.{weight,lambda,density}``.
    Raises UsageError naming the setting for a bad one."""
    env = os.environ.get(f"{ENV}METHOD")
    attr = attributes.value(repo.top, path, "theta-merge") if env is None else None
    config = repo.git_config.get("theta.merge.method")
    if env is not None:
        name, source = env, f"{ENV}METHOD"
    elif attr is not None:
        name, source = attr, f"the theta-merge attribute of {path}"
    elif config is not None:
        name, source = config, "theta.merge.method"
    else:
        name, source = "conflict", ""
    chosen = methods.parse(name, source=source)
    return methods.parse(chosen.name, *configured_parameters(repo))


def _parse(data: bytes, side: str) -> Manifest:
    manifest = parse_if_manifest(data) if data.strip() else None
    if manifest is None:
        raise ManifestError(f"{side} is not a git-theta manifest")
    return manifest


def merge(
    repo: Repo, path: str, base: bytes, ours: bytes, theirs: bytes, method: Method
) -> Outcome:
    """Merge the manifests ``ours`` and ``theirs`` of ``path`` against ``base`` (empty: no
    common ancestor) with ``method``."""
    try:
        ours_m, theirs_m = _parse(ours, "ours"), _parse(theirs, "theirs")
        base_m = _parse(base, "the merge base") if base.strip() else None
    except ManifestError as exc:
        return Outcome(None, [f"{exc}: git-theta cannot merge it"], method, [])
    plan = threeway.plan(base_m, ours_m, theirs_m)
    conflicts = list(plan.conflicts)
    if plan.both and (conflicts or method.name == "conflict"):  # all of them, listed
        conflicts += [f"tensor `{name}`: changed on both sides" for name in plan.both]
    if conflicts:
        return Outcome(None, sorted(conflicts), method, [])
    resolved = _resolve(repo, path, plan, method)
    merged = _keep_layout(plan.manifest(resolved), plan.layouts)
    problem = _inconsistency(merged)
    if problem:
        return Outcome(None, [problem], method, [])
    return Outcome(merged.to_bytes(), [], method, sorted(resolved))


def _keep_layout(merged: Manifest, layouts: list[Any]) -> Manifest:
    """The merged manifest with the first side's recorded file layout that still fits its
    tree and tensors (checkout then writes what torch.save would write for them), or with
    none (checkout writes git-theta's own layout)."""
    from git_theta.formats import TensorData, pytorch

    if merged.format.get("name") != "pytorch":
        return merged
    tensors = {
        name: TensorData(r.dtype, r.shape, lambda: np.zeros(0))
        for name, r in merged.tensors.items()
    }
    for layout in layouts:
        fmt = {**merged.format, threeway.LAYOUT: layout}
        if pytorch.layout_fits(fmt, tensors, merged.aliases):
            return Manifest(fmt, merged.tensors, merged.aliases)
    return merged


def _inconsistency(merged: Manifest) -> str:
    """Why the merged manifest could not be checked out ("" when it can): each side's
    changes are sound alone, but not every pair of them fits together (a tie to a tensor
    the other side deleted)."""
    from git_theta import formats
    from git_theta.formats import TensorData

    try:
        Manifest.from_bytes(merged.to_bytes())
        tensors = {
            name: TensorData(r.dtype, r.shape, lambda: np.zeros(0))
            for name, r in merged.tensors.items()
        }
        formats.get(merged.format["name"]).write_order(merged.format, tensors, merged.aliases)
    except (ThetaError, KeyError, ValueError, TypeError) as exc:
        return f"the two sides' changes do not fit together: {exc}"
    return ""


def _resolve(repo: Repo, path: str, plan: threeway.Plan, method: Method) -> dict[str, TensorRecord]:
    """Records for the tensors changed on both sides, by ``method``."""
    if method.name in methods.SELECTION:
        pick = {"base": 0, "ours": 1, "theirs": 2}[method.name]  # sides: base, ours, theirs
        return {name: sides[pick] for name, sides in plan.both.items()}
    needed = Manifest(
        {"name": "merge"},
        {
            f"{name} ({side})": record
            for name, sides in plan.both.items()
            for side, record in zip(("base", "ours", "theirs"), sides, strict=True)
        },
    )
    fetch_missing(repo, [Located(path, needed)])
    resolved = {}
    for name, (base, ours, theirs) in plan.both.items():
        values = [
            methods.to_float64(_words(repo, record), record.dtype)
            for record in (base, ours, theirs)
        ]
        merged = methods.combine(method, *values)
        word = word_dtype(get_dtype(base.dtype).itemsize)
        words = methods.from_float64(merged, base.dtype, word)
        resolved[name] = updates.store_tensor(
            base.dtype, base.shape, words, repo.store, repo.config
        )
    return resolved


def _words(repo: Repo, record: TensorRecord) -> np.ndarray:
    """A tensor's canonical words, checked against its identity hash."""
    from git_theta.filter import load_tensor

    return load_tensor("", record, repo.store)


def conflict_message(path: str, outcome: Outcome) -> list[str]:
    """The lines that tell a user what conflicts in ``path`` and how to resolve it."""
    lines = [f"{path}: changed on both sides, not merged automatically:"]
    lines += [f"  {c}" for c in outcome.conflicts]
    ways = [
        f"`git checkout --ours {path}` (or `--theirs`) takes one side whole, then `git add {path}`"
    ]
    if all(c.endswith(": changed on both sides") for c in outcome.conflicts):
        ways.insert(
            0,
            f"`git theta resolve {path} --method M` merges those tensors (M: ours, theirs, "
            "base, average, task-arithmetic, ties) and stages the result",
        )
    lines.append("  to resolve: " + "; or ".join(ways))
    return lines
