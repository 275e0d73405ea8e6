"""git theta diff / log / show, and the diff driver git runs (`git-theta diff-driver`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from git_theta.cli.output import show_lines, size_text

if TYPE_CHECKING:
    from git_theta.diffing import FileDiff, TensorChange

JSON_SCHEMA_VERSION = 1


class _PathspecCommand(click.Command):
    """Takes everything after the first `--` as paths (click would swallow the `--`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["pathspecs"] = args[at + 1 :]
            args = args[:at]
        else:
            ctx.meta["pathspecs"] = []
        return super().parse_args(ctx, args)


def _kind(shape: tuple[str, tuple[int, ...]] | None) -> str:
    if shape is None:
        return ""
    return f"{shape[0]} {list(shape[1])}"


def _tensor_line(change: TensorChange) -> str:
    mark = {"added": "A", "removed": "D", "modified": "M"}[change.status]
    if change.status == "added":
        return f"{mark} {change.name} {_kind(change.new)}"
    if change.status == "removed":
        return f"{mark} {change.name} {_kind(change.old)}"
    if change.old != change.new:
        return f"{mark} {change.name} {_kind(change.old)} → {_kind(change.new)}"
    line = f"{mark} {change.name} {_kind(change.new)}"
    if change.changed is None:
        return line + ": figures missing"
    share = 100.0 * change.changed / change.entries if change.entries else 0.0
    line += f": {share:.3g}% of {change.entries} entries changed, ‖Δ‖ {change.l2:.6g}"
    relative = change.relative
    if relative is not None:
        line += f" ({100.0 * relative:.4g}% of ‖old‖)"
    return line


def render(diff: FileDiff) -> list[str]:
    """The text of one checkpoint's changes (nothing when it did not change)."""
    if diff.empty:
        return []
    if diff.unmerged:
        return [f"* Unmerged path {diff.path}"]
    lines = [f"diff --theta a/{diff.old_path or diff.path} b/{diff.path}"]
    if diff.problem:
        return [*lines, f"! not compared: {diff.problem}"]
    lines += [_tensor_line(t) for t in diff.tensors]
    lines += [f"~ {v.path}: {v.old} → {v.new}" for v in diff.values]
    if diff.missing:
        lines.append(f"! figures missing: {diff.missing}")
    lines.append(
        f"= {diff.count('added')} added, {diff.count('removed')} removed, "
        f"{diff.count('modified')} modified tensors; {len(diff.values)} values changed"
    )
    return lines


def as_json(diff: FileDiff) -> dict[str, Any]:
    """One checkpoint's changes in the documented JSON schema (README, `--format json`)."""

    def side(shape: tuple[str, tuple[int, ...]] | None) -> dict[str, Any] | None:
        return None if shape is None else {"dtype": shape[0], "shape": list(shape[1])}

    return {
        "path": diff.path,
        "tensors": [
            {
                "name": t.name,
                "status": t.status,
                "old": side(t.old),
                "new": side(t.new),
                "entries": t.entries if t.status == "modified" and t.old == t.new else None,
                "changed_entries": t.changed,
                "l2": t.l2,
                "old_l2": t.old_l2,
                "relative_l2": t.relative,
                "bytes_changed": t.bytes_changed,
            }
            for t in diff.tensors
        ],
        "values": [{"path": v.path, "old": v.old, "new": v.new} for v in diff.values],
        "figures_missing": diff.missing or None,
        "totals": {
            "added": diff.count("added"),
            "removed": diff.count("removed"),
            "modified": diff.count("modified"),
            "values": len(diff.values),
            "bytes_changed": diff.bytes_changed,
        },
    }


@click.command("diff-driver", hidden=True)
@click.argument("args", nargs=-1)
def diff_driver(args: tuple[str, ...]) -> None:
    """git's external diff: PATH OLD-FILE OLD-HEX OLD-MODE NEW-FILE NEW-HEX NEW-MODE."""
    from git_theta import diffing
    from git_theta import diffs as diffs_lib
    from git_theta.errors import ThetaError
    from git_theta.repo import Repo

    if len(args) < 7:  # an unmerged path: git passes only its name
        click.echo(f"* Unmerged path {args[0] if args else ''}")
        return
    path, old_file, old_hex, _, new_file, new_hex, _ = args[:7]
    new_path = args[7] if len(args) >= 9 else path  # a rename: its new name follows
    repo = Repo.open(Path.cwd())
    try:
        old = diffs_lib.side(repo, path, old_file, old_hex)
        new = diffs_lib.side(repo, new_path, new_file, new_hex)
        diff = diffing.compare(repo, new_path, old, new)
    except ThetaError as exc:  # git's diff must go on: say it here, in the output
        diff = diffing.FileDiff(new_path, problem=str(exc))
    diff.old_path = path
    for line in render(diff):
        click.echo(line)


@click.command(cls=_PathspecCommand)
@click.argument("revs", nargs=-1)
@click.option("--cached", "--staged", is_flag=True, help="Compare the index with HEAD (or REV).")
@click.option("--stat", is_flag=True, help="One line per checkpoint: tensors and bytes changed.")
@click.option("--name-only", is_flag=True, help="Only the paths of changed checkpoints.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    help="json: the documented schema (see README).",
)
@click.option("--exit-code", is_flag=True, help="Exit 1 when anything changed, else 0.")
@click.pass_context
def diff(
    ctx: click.Context,
    revs: tuple[str, ...],
    cached: bool,
    stat: bool,
    name_only: bool,
    fmt: str,
    exit_code: bool,
) -> None:
    """Show what changed inside checkpoints: [REV [REV]] [-- PATH...].

    Like `git diff`: no REV compares the work tree with the index (--cached: the index with
    HEAD), one REV the work tree (--cached: the index) with REV, two REVs the two commits.
    Per checkpoint: one line per tensor added (A), removed (D) or modified (M; the fraction
    of entries changed, the L2 norm of the difference and its size relative to the old
    tensor's), one per non-tensor value changed (~), then totals.
    """
    from git_theta import diffs as diffs_lib
    from git_theta.errors import UsageError
    from git_theta.repo import Repo

    if len(revs) > 2:
        raise UsageError("give at most two revisions (then `--` and paths)")
    repo = Repo.open(Path.cwd())
    found = diffs_lib.diff(
        repo, list(revs), ctx.meta["pathspecs"], cached, figures=not (stat or name_only)
    )
    changed = [d for d in found if not d.empty]
    if fmt == "json":
        document = {"git_theta_diff": JSON_SCHEMA_VERSION, "files": [as_json(d) for d in changed]}
        click.echo(json.dumps(document, indent=2))
    elif name_only:
        for d in changed:
            click.echo(d.path)
    elif stat:
        lines = [
            f" {d.path} | {d.count('added')} added, {d.count('removed')} removed, "
            f"{d.count('modified')} modified, {len(d.values)} values; "
            f"{size_text(d.bytes_changed)} changed"
            for d in changed
        ]
        show_lines(lines + ([f" {len(changed)} checkpoints changed"] if changed else []), repo.top)
    else:
        show_lines([line for d in changed for line in render(d)], repo.top)
    if exit_code and changed:
        sys.exit(1)


@click.command(cls=_PathspecCommand)
@click.argument("revs", nargs=-1)
@click.pass_context
def log(ctx: click.Context, revs: tuple[str, ...]) -> None:
    """Per commit, the checkpoints it changed: [REV-RANGE] [-- PATH...].

    For each checkpoint a commit changed: tensors added, removed and modified, and the bytes
    of objects it stored that its parent's version did not have.
    """
    from git_theta import diffs as diffs_lib
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    for entry in diffs_lib.log(repo, list(revs), ctx.meta["pathspecs"]):
        click.echo(f"commit {entry.commit} {entry.subject}")
        for key, value in entry.metadata.items():
            click.echo(f"  {key}: {json.dumps(value, sort_keys=True)}")
        for item in entry.files:
            d = item.diff
            click.echo(
                f"  {d.path}: {d.count('added')} added, {d.count('removed')} removed, "
                f"{d.count('modified')} modified tensors; {size_text(item.new_bytes)} newly stored"
            )


@click.command()
@click.argument("pattern", required=False)
def runs(pattern: str | None) -> None:
    """Every branch with its latest commit's metadata: [PATTERN] (a glob of branch names).

    The metadata are what `git_theta.save(..., metadata=...)` stored in the commit as
    trailers (`Theta-<key>: <JSON>`): one row per branch, one column per key.
    """
    from git_theta import experiments as runs_lib
    from git_theta.repo import Repo

    found = runs_lib.runs(Repo.open(Path.cwd(), bare_ok=True), pattern)
    keys = sorted({key for run in found for key in run.metadata})
    rows = [["branch", "commit", "date", *keys]]
    for run in found:
        shown = [
            json.dumps(run.metadata[k], sort_keys=True) if k in run.metadata else "-" for k in keys
        ]
        rows.append([run.branch, run.commit[:12], run.date, *shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@click.command()
@click.argument("spec")
def show(spec: str) -> None:
    """The tensors of a checkpoint: [REV:]PATH (default: the index's version).

    One line per tensor: name, dtype, shape, encoding and stored size; then totals. A
    tensor stored as an update (xor, sparse, low-rank, ia3) shows how many updates lie
    between it and a dense copy, and the size of its own objects with, after `of`, that
    of its whole chain.
    """
    from git_theta import diffs as diffs_lib
    from git_theta.formats import pytorch
    from git_theta.manifest import Delta, depth
    from git_theta.repo import Repo

    repo = Repo.open(Path.cwd())
    where, manifest = diffs_lib.load_spec(repo, spec)
    click.echo(f"{where} ({manifest.format['name']}, {len(manifest.tensors)} tensors)")
    views = pytorch.views(manifest.format) if manifest.format["name"] == "pytorch" else {}
    for name, record in manifest.tensors.items():
        stored = size_text(sum(o.size for o in record.objects))
        encoding = record.encoding
        if isinstance(record.storage, Delta):
            steps = depth(record.storage)
            encoding += f" ({steps} update{'s' if steps != 1 else ''} deep)"
            stored = f"{size_text(sum(o.size for o in record.storage.own))} of {stored}"
        shape = f"{list(record.shape)}"
        if name in views:  # stored as the span of elements a repeating view covers
            shape += f" viewed as {views[name]}"
        click.echo(f"{name}  {record.dtype}  {shape}  {encoding}  {stored}")
    click.echo(
        f"total: {len(manifest.tensors)} tensors, {size_text(manifest.logical_size())} "
        f"logical, {size_text(manifest.stored_size())} stored"
    )


@click.command(hidden=True)
@click.argument("file")
def textconv(file: str) -> None:
    """git's textconv for `git log -p` and `git show`: a checkpoint (or manifest) as text,
    one line per tensor (name, dtype, shape, identity hash) and per non-tensor value."""
    from git_theta import diffs as diffs_lib

    for line in diffs_lib.as_text(Path(file)):
        click.echo(line)
