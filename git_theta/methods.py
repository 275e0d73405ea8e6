"""How a tensor changed on both sides of a merge is resolved: the methods and their formulas.

Selection methods take one side's record as it is (``ours``, ``theirs``, ``base``): no
arithmetic, no new object. Arithmetic methods compute in float64 from the three versions
and round once to the tensor's dtype:

- ``average``: ``w * ours + (1 - w) * theirs``;
- ``task-arithmetic``: ``base + λ * ((ours - base) + (theirs - base))``;
- ``ties`` (TIES-merging, as mergekit does it): task vectors ``δ = x - base``, each trimmed
  to the ``density`` fraction of its entries largest in magnitude (at least one entry; the
  rest set to 0); the elected sign of an entry is the sign of the sum of the trimmed ``δ``
  (positive for a sum of 0); the merged ``δ`` is the mean of the trimmed, non-zero entries
  whose sign agrees with it (0 where none does); result ``base + λ * δ``.

Rounding is done once: float64 to the tensor's dtype, correctly rounded also for bfloat16
and the float8 types (which ml_dtypes reaches through float32: the float32 step rounds to
odd, so the second rounding cannot land on the wrong side).

``conflict`` (the default) resolves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta.errors import UsageError

SELECTION = ("ours", "theirs", "base")
ARITHMETIC = ("average", "task-arithmetic", "ties")
METHODS = ("conflict", *SELECTION, *ARITHMETIC)


@dataclass(frozen=True)
class Method:
    """A merge method and its parameters."""

    name: str = "conflict"
    weight: float = 0.5  # average: the weight of ours
    lam: float = 1.0  # task-arithmetic, ties: the scale of the merged task vector
    density: float = 0.2  # ties: the fraction of each task vector kept

    def describe(self) -> str:
        if self.name == "average":
            return f"average (weight {self.weight:g})"
        if self.name == "task-arithmetic":
            return f"task-arithmetic (lambda {self.lam:g})"
        if self.name == "ties":
            return f"ties (density {self.density:g}, lambda {self.lam:g})"
        return self.name


def parse(
    name: str,
    weight: str | None = None,
    lam: str | None = None,
    density: str | None = None,
    source: str = "",
) -> Method:
    """A method from its name and parameters as text; raises UsageError naming ``source``
    (where the value came from) for an unknown method or a bad number."""
    where = f" (from {source})" if source else ""
    method = name.strip().lower()
    if method not in METHODS:
        raise UsageError(f"unknown merge method `{name}`{where}: use one of {', '.join(METHODS)}")
    values = {}
    for key, text, low, high in (
        ("weight", weight, 0.0, 1.0),
        ("lambda", lam, -math.inf, math.inf),
        ("density", density, 0.0, 1.0),
    ):
        if text is None or not text.strip():
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (
            not math.isfinite(value)
            or not low <= value <= high
            or (key == "density" and value == 0)
        ):
            bounds = {"weight": "from 0 to 1", "lambda": "finite", "density": "above 0, at most 1"}
            raise UsageError(f"merge {key} `{text}`{where} is not a number {bounds[key]}")
        values[key] = value
    return Method(
        method,
        values.get("weight", 0.5),
        values.get("lambda", 1.0),
        values.get("density", 0.2),
    )


def _trim(delta: np.ndarray, density: float) -> np.ndarray:
    """``delta`` with all but its ``density`` fraction of largest-magnitude entries zeroed."""
    keep = max(1, int(density * delta.size))  # a small tensor keeps its largest change
    if keep >= delta.size:
        return delta
    out = np.zeros_like(delta)
    if keep > 0:
        # a stable sort: among equal magnitudes the earlier entry is kept
        order = np.argsort(-np.abs(delta), kind="stable")[:keep]
        out[order] = delta[order]
    return out


def combine(method: Method, base: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The merged values (float64, flat) of an arithmetic method."""
    if method.name == "average":
        return method.weight * ours + (1.0 - method.weight) * theirs
    if method.name == "task-arithmetic":
        return base + method.lam * ((ours - base) + (theirs - base))
    if method.name == "ties":
        deltas = np.stack(
            [_trim(ours - base, method.density), _trim(theirs - base, method.density)]
        )
        elected = np.where(deltas.sum(axis=0) >= 0, 1.0, -1.0)
        agree = (np.sign(deltas) == elected) & (deltas != 0)
        count = agree.sum(axis=0)
        total = np.where(agree, deltas, 0.0).sum(axis=0)
        merged = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return base + method.lam * merged
    raise ValueError(f"`{method.name}` is not an arithmetic merge method")


def float_type(dtype_name: str) -> type | None:
    """The numpy scalar type of a floating-point dtype (None for any other dtype)."""
    import ml_dtypes  # tensorstore's dependency: the 16- and 8-bit float types

    return {
        "float64": np.float64,
        "float32": np.float32,
        "float16": np.float16,
        "bfloat16": ml_dtypes.bfloat16,
        "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
        "float8_e5m2": ml_dtypes.float8_e5m2,
    }.get(dtype_name)


def to_float64(words: np.ndarray, dtype_name: str) -> np.ndarray:
    """A tensor's canonical words as float64 values."""
    kind = float_type(dtype_name)
    assert kind is not None
    return words.view(kind).astype(np.float64)


def from_float64(values: np.ndarray, dtype_name: str, word: np.dtype) -> np.ndarray:
    """float64 values rounded once to ``dtype_name``, as canonical words of type ``word``."""
    kind = float_type(dtype_name)
    assert kind is not None
    with np.errstate(over="ignore"):  # out of the dtype's range: inf, as rounding gives
        if dtype_name in ("float64", "float32", "float16"):  # numpy rounds these directly
            return np.ascontiguousarray(values.astype(kind)).view(word)
        return np.ascontiguousarray(_to_float32_odd(values).astype(kind)).view(word)


def _to_float32_odd(values: np.ndarray) -> np.ndarray:
    """float64 to float32 rounded to odd: truncated toward zero, with the lowest mantissa
    bit set when that dropped anything. A later rounding to a type of at most 22 mantissa
    bits then gives the correctly rounded result."""
    with np.errstate(over="ignore"):  # beyond float32's range: inf, stepped back below
        near = values.astype(np.float32)
    back = near.astype(np.float64)
    finite = np.isfinite(values)
    inexact = finite & (back != values)
    bits = near.view(np.uint32).copy()
    over = inexact & (np.abs(back) > np.abs(values))  # rounded away from zero: step back
    bits[over] -= 1
    bits[inexact] |= 1
    return bits.view(np.float32)
