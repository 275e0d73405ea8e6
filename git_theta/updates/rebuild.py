"""Rebuilding updates given as factors (low-rank, ia3) the same way on every machine.

At `git add` the new tensor is what numpy computes: in float32 (float64 when the tensor or
the factors are float64), the matrix product through BLAS, then rounded to the tensor's
dtype. BLAS results depend on the library and the processor. The rebuild here does not: it
computes each multiply-add of the product as one correctly rounded float32 operation, in
the order of the rank (a fused multiply-add, as BLAS kernels on processors that have one do:
the float64 product of two float32 values is exact, and is rounded once with the sum), then
the scale and the sum with the base likewise, with numpy's elementwise operations, which
are the same on every machine. (float64 tensors are rebuilt with float64 operations.) On
this project's machine it matches numpy's OpenBLAS bit for bit; wherever it does not, the
record carries a correction: the positions and words to replace (``replace``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta.errors import CorruptObjectError
from git_theta.methods import float_type


def compute_type(*dtype_names: str) -> type:
    """The type numpy computes an update in: float64 when any dtype is, else float32."""
    return np.float64 if "float64" in dtype_names else np.float32


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor of 2 or more dimensions read as a matrix: [first dimension, the rest]."""
    rows = shape[0]
    return rows, int(np.prod(shape[1:], dtype=np.int64)) if rows else 0


def broadcasts(small: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether an array of shape ``small`` broadcasts to ``shape`` (and no further)."""
    if len(small) > len(shape):
        return False
    return all(s in (1, d) for s, d in zip(small[::-1], shape[::-1], strict=False))


def is_float(dtype_name: str) -> bool:
    """Whether the updates here apply to values of ``dtype_name`` (real floating point)."""
    return float_type(dtype_name) is not None


def values(words: np.ndarray, dtype_name: str) -> np.ndarray:
    """Words of a floating-point dtype as numpy values of that dtype."""
    kind = float_type(dtype_name)
    assert kind is not None
    return words.view(kind)


# values worked on at once (the rebuild goes through a tensor in blocks of rows)
BLOCK_VALUES = 1 << 22


def _row_blocks(rows: int, per_row: int) -> list[tuple[int, int]]:
    step = max(1, BLOCK_VALUES // max(1, per_row))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _rounded(exact: np.ndarray, ct: type) -> np.ndarray:
    """float64 values rounded once to the compute type."""
    return exact.astype(ct) if ct is not np.float64 else exact


def low_rank(
    base: np.ndarray,
    dtype_name: str,
    shape: tuple[int, ...],
    r: np.ndarray,
    c: np.ndarray,
    scale: float,
) -> np.ndarray:
    """base + (R @ C) * scale as words of ``dtype_name`` (``base``: the base's words; R and
    C: float values of one dtype, [rows, rank] and [rank, columns])."""
    kind = float_type(dtype_name)
    ct = compute_type(dtype_name, r.dtype.name)
    rows, cols = matrix_shape(shape)
    old = values(base, dtype_name).reshape(rows, cols)
    out = np.empty((rows, cols), dtype=kind)
    c64 = c.astype(ct).astype(np.float64)
    factor = ct(scale)
    for start, stop in _row_blocks(rows, cols):
        r64 = r[start:stop].astype(ct).astype(np.float64)
        total: np.ndarray = np.zeros((stop - start, cols), dtype=ct)
        for k in range(r64.shape[1]):  # total = fma(r[:, k], c[k], total), in order
            total = _rounded(np.multiply(r64[:, k, None], c64[None, k, :]) + total, ct)
        if scale != 1.0:
            total = _rounded(total.astype(np.float64) * float(factor), ct)
        summed = _rounded(old[start:stop].astype(ct).astype(np.float64) + total, ct)
        out[start:stop] = summed.astype(kind)
    return out.reshape(-1).view(base.dtype)


def ia3(base: np.ndarray, dtype_name: str, shape: tuple[int, ...], s: np.ndarray) -> np.ndarray:
    """base * s (s broadcast against the tensor) as words of ``dtype_name``."""
    kind = float_type(dtype_name)
    ct = compute_type(dtype_name, s.dtype.name)
    dims = shape or (1,)
    rows, per_row = dims[0], int(np.prod(dims[1:], dtype=np.int64))
    full: np.ndarray = s.reshape((1,) * (len(dims) - s.ndim) + s.shape).astype(ct)
    old = values(base, dtype_name).reshape(rows, per_row)
    out = np.empty((rows, per_row), dtype=kind)
    for start, stop in _row_blocks(rows, per_row):
        part = full if full.shape[0] == 1 else full[start:stop]
        block: np.ndarray = old[start:stop].astype(ct).reshape((stop - start, *dims[1:]))
        product = _rounded(block.astype(np.float64) * part.astype(np.float64), ct)
        out[start:stop] = product.astype(kind).reshape(stop - start, per_row)
    return out.reshape(-1).view(base.dtype)


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
