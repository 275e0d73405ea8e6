"""Three-way merge of manifests, per tensor and per non-tensor value; no tensor data read.

A tensor or value unchanged, or changed on one side only (added and deleted included), is
taken as that side has it: the same record, so the same objects, bit-exact. Both sides
making the same change is no conflict. What is left:

- tensors changed on both sides, same dtype and shape as the base, floating point: the
  merge method may resolve them (``both``);
- everything else changed on both sides (a tensor deleted on one side and changed on the
  other, added on both sides differently, its dtype or shape changed, a non-float tensor, a
  non-tensor value such as ``epoch``, tensors added on both sides that are not the same
  set) is a conflict whatever the method (``conflicts``).

Non-tensor values live in the manifest's ``format`` tree; a torch checkpoint's dicts
(``{"dict": [[key, value], ...]}``) are merged key by key, other lists as one value.
A recorded file layout (``format.archive``: how the file was laid out, not what it holds)
is not merged: ``Plan.layouts`` keeps each side's, and the caller keeps one that still
fits the merged tree and tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from git_theta.manifest import Manifest, TensorRecord
from git_theta.methods import float_type

_ABSENT: Any = object()


@dataclass
class Plan:
    """The merge so far: what is decided, what a method may resolve, what conflicts."""

    format: dict[str, Any]
    aliases: dict[str, str]
    tensors: dict[str, TensorRecord]  # decided (one side's or both sides' record)
    both: dict[str, tuple[TensorRecord, TensorRecord, TensorRecord]] = field(
        default_factory=dict
    )  # name -> (base, ours, theirs), changed on both sides, resolvable by a method
    conflicts: list[str] = field(default_factory=list)
    layouts: list[Any] = field(default_factory=list)  # ours, theirs, base: their `archive`

    def manifest(self, resolved: dict[str, TensorRecord]) -> Manifest:
        """The merged manifest, with ``resolved`` records for the tensors in ``both``."""
        tensors = dict(self.tensors)
        tensors.update(resolved)
        return Manifest(self.format, dict(sorted(tensors.items())), self.aliases)


def _same(a: TensorRecord | None, b: TensorRecord | None) -> bool:
    """Whether two records (None: absent) hold the same tensor."""
    return a is b if a is None or b is None else a.same_tensor(b)


def plan(base: Manifest | None, ours: Manifest, theirs: Manifest) -> Plan:
    """Merge ``ours`` and ``theirs`` against ``base`` (None: no common ancestor)."""
    base_tensors = base.tensors if base else {}
    conflicts: list[str] = []
    decided: dict[str, TensorRecord] = {}
    both: dict[str, tuple[TensorRecord, TensorRecord, TensorRecord]] = {}
    names = list(dict.fromkeys([*ours.tensors, *theirs.tensors, *base_tensors]))
    for name in names:
        b, o, t = base_tensors.get(name), ours.tensors.get(name), theirs.tensors.get(name)
        if _same(o, t):
            taken = o
        elif _same(o, b):
            taken = t
        elif _same(t, b):
            taken = o
        else:
            reason = _why_not_resolvable(b, o, t)
            if reason:
                conflicts.append(f"tensor `{name}`: {reason}")
            else:
                assert b is not None and o is not None and t is not None
                both[name] = (b, o, t)
            continue
        if taken is not None:
            decided[name] = taken
    conflicts += _tie_conflicts(base, ours, theirs)
    added_ours = {n for n in ours.tensors if n not in base_tensors}
    added_theirs = {n for n in theirs.tensors if n not in base_tensors}
    if added_ours and added_theirs and added_ours != added_theirs:
        conflicts.append(
            f"tensors added on both sides: ours adds {_names(added_ours - added_theirs)}, "
            f"theirs adds {_names(added_theirs - added_ours)}"
        )
    sides = [ours, theirs, *([base] if base else [])]
    layouts = [side.format[LAYOUT] for side in sides if LAYOUT in side.format]
    base_format = _content(base.format) if base else _ABSENT
    merged_format = _merge(
        base_format, _content(ours.format), _content(theirs.format), [], conflicts
    )
    base_aliases = base.aliases if base else {}
    merged_aliases = _merge(base_aliases, ours.aliases, theirs.aliases, ["aliases"], conflicts)
    return Plan(
        merged_format if isinstance(merged_format, dict) else _content(ours.format),
        merged_aliases if isinstance(merged_aliases, dict) else ours.aliases,
        decided,
        both,
        conflicts,
        layouts,
    )


LAYOUT = "archive"


def _content(fmt: dict[str, Any]) -> dict[str, Any]:
    """A format section without its recorded layout."""
    return {key: value for key, value in fmt.items() if key != LAYOUT}


def _effective(manifest: Manifest | None, name: str) -> tuple[str | None, TensorRecord | None]:
    """How ``name`` is held in ``manifest`` (tied to which tensor, or None) and the record
    of its values (through the tie)."""
    if manifest is None:
        return None, None
    target = manifest.aliases.get(name)
    return target, manifest.tensors.get(target if target is not None else name)


def _tie_conflicts(base: Manifest | None, ours: Manifest, theirs: Manifest) -> list[str]:
    """A tensor tied to another on one side and not on the other (or tied differently) whose
    values differ between the sides: merging the records alone would lose one side's values
    (changes made through the tie)."""
    tied = {*ours.aliases, *theirs.aliases, *(base.aliases if base else {})}
    found = []
    for name in sorted(tied):
        (tie_o, val_o), (tie_t, val_t) = _effective(ours, name), _effective(theirs, name)
        if tie_o != tie_t and not _same(val_o, val_t):
            found.append(
                f"tensor `{name}`: tied to another tensor on one side and not on the other "
                "(or tied differently), and its values differ"
            )
    return found


def _names(names: set[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names)) or "nothing else"


def _why_not_resolvable(
    b: TensorRecord | None, o: TensorRecord | None, t: TensorRecord | None
) -> str:
    """Why a tensor changed on both sides is a conflict whatever the method ("" when a
    method may resolve it)."""
    if b is None:
        return "added on both sides with different contents"
    if o is None:
        return "deleted in ours, changed in theirs"
    if t is None:
        return "changed in ours, deleted in theirs"
    shapes = {(r.dtype, tuple(r.shape)) for r in (b, o, t)}
    if len(shapes) > 1:
        return "its dtype or shape changed: " + ", ".join(
            f"{side} {r.dtype}{list(r.shape)}"
            for side, r in (("base", b), ("ours", o), ("theirs", t))
        )
    if float_type(b.dtype) is None:
        return f"changed on both sides, and a {b.dtype} tensor cannot be merged by arithmetic"
    return ""


def show_value(value: Any) -> str:
    """A non-tensor value for a message: a torch leaf as its plain value, else JSON."""
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, dict) and len(value) == 1:
        ((kind, inner),) = value.items()
        if kind in ("int", "float", "bool", "str", "none"):
            return json.dumps(inner)
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(path: list[str]) -> str:
    return "/".join(path) or "the checkpoint's structure"


def _merge(base: Any, ours: Any, theirs: Any, path: list[str], conflicts: list[str]) -> Any:
    """Three-way merge of JSON values (``_ABSENT`` for a missing key)."""
    if ours == theirs:
        return ours
    if ours == base:
        return theirs
    if theirs == base:
        return ours
    if all(isinstance(v, dict) for v in (ours, theirs)) and (
        base is _ABSENT or isinstance(base, dict)
    ):
        if (
            is_pair_node(ours)
            and set(ours) == set(theirs)
            and (base is _ABSENT or (is_pair_node(base) and set(base) == set(ours)))
        ):  # a torch dict or OrderedDict (with its attributes): key by key
            return {
                kind: _merge_pairs(
                    _ABSENT if base is _ABSENT else base[kind],
                    ours[kind],
                    theirs[kind],
                    path if kind != "attrs" else [*path, "(attributes)"],
                    conflicts,
                )
                for kind in ours
            }
        if len(ours) == 1 or len(theirs) == 1:  # a torch node ({"int": 3}, {"list": …}): whole
            conflicts.append(_value_conflict(base, ours, theirs, path))
            return ours
        b = {} if base is _ABSENT else base
        merged = {}
        for key in dict.fromkeys([*ours, *theirs]):
            value = _merge(
                b.get(key, _ABSENT),
                ours.get(key, _ABSENT),
                theirs.get(key, _ABSENT),
                [*path, key] if path or key not in ("root",) else path,
                conflicts,
            )
            if value is not _ABSENT:
                merged[key] = value
        return merged
    conflicts.append(_value_conflict(base, ours, theirs, path))
    return ours


def _value_conflict(base: Any, ours: Any, theirs: Any, path: list[str]) -> str:
    return (
        f"value `{_describe(path)}`: {show_value(base)} -> {show_value(ours)} in ours, "
        f"{show_value(theirs)} in theirs"
    )


_PAIR_KINDS = frozenset({"dict", "odict", "attrs"})


def is_pair_node(value: Any) -> bool:
    """Whether ``value`` is a torch checkpoint's dict node: ``{"dict": [[key, value], ...]}``,
    or an OrderedDict's ``{"odict": [...]}`` with its ``"attrs"`` when it has some."""
    return (
        isinstance(value, dict)
        and bool(value)
        and set(value) <= _PAIR_KINDS
        and ("attrs" not in value or len(value) == 2)
        and all(
            isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)
            for pairs in value.values()
        )
    )


def _label(key: Any) -> str:
    return key if isinstance(key, str) else show_value(key)


def _merge_pairs(
    base: Any, ours: list[Any], theirs: list[Any], path: list[str], conflicts: list[str]
) -> list[list[Any]]:
    """Merge the ``[key, value]`` lists of torch dict nodes key by key; ours' order, then
    keys only theirs adds."""

    def entries(pairs: Any) -> dict[str, tuple[Any, Any]]:
        if pairs is _ABSENT:
            return {}
        return {json.dumps(k, sort_keys=True): (k, v) for k, v in pairs}

    b, o, t = entries(base), entries(ours), entries(theirs)
    merged = []
    for ident in dict.fromkeys([*o, *t]):
        key = next(side[ident][0] for side in (o, t, b) if ident in side)
        value = _merge(
            b.get(ident, (None, _ABSENT))[1],
            o.get(ident, (None, _ABSENT))[1],
            t.get(ident, (None, _ABSENT))[1],
            [*path, _label(key)],
            conflicts,
        )
        if value is not _ABSENT:
            merged.append([key, value])
    return merged
