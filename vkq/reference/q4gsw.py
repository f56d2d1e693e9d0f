"""q4gsw linear reference (docs/design.md §3): y = bias + x @ dequant(w).T, float64 math.

Dequantization (docs/design.md §2): ``w[n, k] = q[n, k] * scales[n, g] (+ zeros[n, g])`` with
``g = k // group_size`` and ``q = u - 8`` in [-8, 7].
"""
from __future__ import annotations

import numpy as np


def q4gsw_dequantize_reference(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                               group_size: int) -> np.ndarray:
    """float64 weights ``[N, K]`` from int4 values ``q`` and ``[N, n_groups]`` parameters."""
    q64 = np.asarray(q, dtype=np.float64)
    s = np.repeat(np.asarray(scales, dtype=np.float64), group_size, axis=1)
    w = q64 * s
    if zeros is not None:
        w = w + np.repeat(np.asarray(zeros, dtype=np.float64), group_size, axis=1)
    return w


def q4gsw_linear_reference(x: np.ndarray, q: np.ndarray, scales: np.ndarray,
                           zeros: np.ndarray | None, group_size: int,
                           bias: np.ndarray | None = None) -> np.ndarray:
    """``bias + x @ w.T`` in float64 for ``x[..., K]``; returns float64 ``[..., N]``.

    Float64 keeps the reference's own rounding far below the fp32 kernels' (tests compare
    against it with a bound derived from the kernels' fp32 accumulation). NaN/Inf in ``x``
    propagate as IEEE products and sums do (``inf * 0`` is NaN).
    """
    w = q4gsw_dequantize_reference(q, scales, zeros, group_size)
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        # einsum, not matmul: BLAS may skip zero weights and so lose inf * 0 = NaN.
        y = np.einsum("...k,nk->...n", x64, w)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return y
