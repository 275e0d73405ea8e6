"""Rebuilding updates given as factors (low-rank, ia3) the same way on every machine.

numpy's matrix product goes through BLAS, whose results differ between machines and
libraries by an ulp here and there. The rebuild here does not: float64 values, one
elementwise operation at a time in a fixed order (a rank-one outer product per factor
column, summed in order), rounded once to the tensor's dtype. What it gets differently from
the numpy reconstruction made at `git add` is recorded there as a correction: the positions
and words to replace (``replace``).
"""

from __future__ import annotations

import numpy as np

from git_theta.errors import CorruptObjectError
from git_theta.methods import float_type, from_float64, to_float64


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor of 2 or more dimensions read as a matrix: [first dimension, the rest]."""
    rows = shape[0]
    return rows, int(np.prod(shape[1:], dtype=np.int64)) if rows else 0


def is_float(dtype_name: str) -> bool:
    """Whether the updates here apply to values of ``dtype_name`` (real floating point)."""
    return float_type(dtype_name) is not None


def values(words: np.ndarray, dtype_name: str) -> np.ndarray:
    """Words of a floating-point dtype as numpy values of that dtype."""
    kind = float_type(dtype_name)
    assert kind is not None
    return words.view(kind)


# float64 values worked on at once (the rebuild goes through a tensor in blocks of rows)
BLOCK_VALUES = 1 << 22


def _row_blocks(rows: int, per_row: int) -> range:
    step = max(1, BLOCK_VALUES // max(1, per_row))
    return range(0, rows, step)


def low_rank(
    base: np.ndarray,
    dtype_name: str,
    shape: tuple[int, ...],
    r: np.ndarray,
    c: np.ndarray,
    scale: float,
) -> np.ndarray:
    """base + (R @ C) * scale as words of ``dtype_name`` (``base``: the base's words; R and
    C: float values, [rows, rank] and [rank, columns])."""
    rows, cols = matrix_shape(shape)
    c64 = c.astype(np.float64)
    old = base.reshape(rows, cols) if rows else base
    out = np.empty_like(base).reshape(rows, cols) if rows else np.empty_like(base)
    for start in _row_blocks(rows, cols):
        stop = min(rows, start + max(1, BLOCK_VALUES // max(1, cols)))
        r64 = r[start:stop].astype(np.float64)
        total = np.zeros((stop - start, cols))
        term = np.empty((stop - start, cols))
        for k in range(r64.shape[1]):
            np.multiply(r64[:, k, None], c64[None, k, :], out=term)
            total += term
        if scale != 1.0:
            total *= scale
        total += to_float64(np.ascontiguousarray(old[start:stop]).reshape(-1), dtype_name).reshape(
            stop - start, cols
        )
        out[start:stop] = from_float64(total.reshape(-1), dtype_name, base.dtype).reshape(
            stop - start, cols
        )
    return out.reshape(-1)


def ia3(base: np.ndarray, dtype_name: str, shape: tuple[int, ...], s: np.ndarray) -> np.ndarray:
    """base * s (s broadcast against the tensor) as words of ``dtype_name``."""
    if not shape:
        product = to_float64(base, dtype_name) * s.astype(np.float64).reshape(-1)
        return from_float64(product, dtype_name, base.dtype)
    rows = shape[0]
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    full = s.reshape((1,) * (len(shape) - s.ndim) + s.shape)  # as many dimensions as the tensor
    old = base.reshape(rows, per_row)
    out = np.empty_like(old)
    for start in _row_blocks(rows, per_row):
        stop = min(rows, start + max(1, BLOCK_VALUES // max(1, per_row)))
        part = full if full.shape[0] == 1 else full[start:stop]
        values = to_float64(np.ascontiguousarray(old[start:stop]).reshape(-1), dtype_name)
        product = values.reshape((stop - start, *shape[1:])) * part.astype(np.float64)
        out[start:stop] = from_float64(product.reshape(-1), dtype_name, base.dtype).reshape(
            stop - start, per_row
        )
    return out.reshape(-1)


def positions(gaps: np.ndarray, count: int) -> np.ndarray:
    """Positions from their gaps (the first position, then each one's distance from the one
    before), checked to lie in a tensor of ``count`` words, strictly increasing."""
    found = np.cumsum(gaps, dtype=np.uint64)
    # each gap is below the tensor's size, so a sum that wrapped around shows as a decrease
    if found.size and (
        gaps.max() >= count or found[-1] >= count or not (found[1:] > found[:-1]).all()
    ):
        raise CorruptObjectError("update's positions are out of order or range")
    return found


def gaps_of(found: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The gaps of increasing positions, as unsigned words of ``dtype``."""
    gaps = found.astype(dtype)
    gaps[1:] = np.diff(found)  # small numbers, which compress well
    return gaps


def replace(words: np.ndarray, gaps: np.ndarray, new: np.ndarray) -> None:
    """Replace the words at the positions ``gaps`` give with ``new``, in place."""
    words[positions(gaps, words.size)] = new
