"""git theta resolve, and the merge driver git runs (`git-theta merge-driver`)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from git_theta.cli.output import report


@click.command("merge-driver", hidden=True)
@click.argument("base")
@click.argument("ours")
@click.argument("theirs")
@click.argument("path")
def merge_driver(base: str, ours: str, theirs: str, path: str) -> None:
    """git's merge driver: merge the manifests in the files BASE, OURS and THEIRS of PATH
    into OURS; exit 1, leaving OURS as it is, when they conflict."""
    from git_theta import merge
    from git_theta.errors import ThetaError
    from git_theta.repo import Repo

    try:
        repo = Repo.open(Path.cwd())
        method = merge.method_for(repo, path)
        outcome = merge.merge(
            repo,
            path,
            Path(base).read_bytes(),
            Path(ours).read_bytes(),
            Path(theirs).read_bytes(),
            method,
        )
    except ThetaError as exc:  # a bad setting, an object that cannot be read or fetched
        report(f"error: {path}: {exc}")
        report(f"{path}: left as a conflict, with our version in the work tree")
        sys.exit(1)
    if outcome.manifest is None:
        for line in merge.conflict_message(path, outcome):
            report(line)
        sys.exit(1)
    _replace(Path(ours), outcome.manifest)
    if outcome.resolved:
        names = ", ".join(f"`{n}`" for n in outcome.resolved)
        report(f"{path}: {names} changed on both sides, merged by {method.describe()}")


def _replace(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".theta-merge-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@click.command()
@click.argument("path")
@click.option(
    "--method",
    "-m",
    "name",
    required=True,
    metavar="METHOD",
    help="ours, theirs, base, average, task-arithmetic or ties.",
)
@click.option(
    "--weight", metavar="W", help="average: the weight of ours (default: theta.merge.weight, 0.5)."
)
@click.option(
    "--lambda",
    "lam",
    metavar="L",
    help="task-arithmetic, ties: scale (default: theta.merge.lambda, 1).",
)
@click.option(
    "--density",
    metavar="D",
    help="ties: fraction of each change kept (default: theta.merge.density, 0.2).",
)
def resolve(path: str, name: str, weight: str | None, lam: str | None, density: str | None) -> None:
    """Resolve a conflicted checkpoint: merge the tensors changed on both sides by METHOD.

    During a merge, rebase, cherry-pick, revert or stash pop that stopped on PATH, merges
    the three versions git recorded (base, ours, theirs): tensors changed on one side are
    taken as they are, tensors changed on both by METHOD. Writes the merged checkpoint to
    the work tree and stages it. Values such as `epoch` changed on both sides, or a
    tensor's shape or dtype, cannot be resolved so: take one side whole with
    `git checkout --ours PATH` or `--theirs PATH`.
    """
    from git_theta import merge, methods
    from git_theta import resolve as resolve_lib
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    configured = merge.configured_parameters(repo)  # what the options do not say
    method = methods.parse(
        name,
        weight if weight is not None else configured[0],
        lam if lam is not None else configured[1],
        density if density is not None else configured[2],
        source="--method",
    )
    full, outcome = resolve_lib.resolve(repo, path, method)
    if outcome.manifest is None:
        for line in outcome.conflicts:
            report(f"error: {full}: {line}")
        report(
            f"{full}: not resolved; take one side whole with `git checkout --ours {full}` (or `--theirs`)"
        )
        sys.exit(1)
    merged = len(outcome.resolved)
    report(f"{full}: {merged} tensors merged by {method.describe()}; staged")
