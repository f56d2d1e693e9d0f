"""qta8a_qga4w linear reference (docs/design.md §3): float activations quantized per token to
int8 (vkq/reference/per_token.py), times int4 group-wise weights, float output.

    xq, s_x, zp = quantize_per_token(x)                          (bit for bit the kernels')
    acc[m, n, g] = sum_{k in g} (xq[m, k] - zp[m]) * q[n, k]     (exact integers, q = u - 8)
    zs[m, g]     = sum_{k in g} (xq[m, k] - zp[m])               (asymmetric weights only)
    y[m, n]      = bias[n] + s_x[m] * sum_g (scales[n, g] * acc[m, n, g] + zeros[n, g] * zs[m, g])

The float part in float64 here; the kernels run it in float32 and stay within
`qta8a_error_bound` of it. A row with NaN or +-Inf gives NaN outputs in that row only (its
scale is NaN); a row whose range overflows float32 (scale inf) gives NaN too (inf * 0).
"""
from __future__ import annotations

import numpy as np

from vkq.reference.per_token import quantize_per_token_reference

U = 2.0 ** -24  # float32 unit roundoff


def qta8a_group_accumulators(xq: np.ndarray, zp: np.ndarray, q: np.ndarray,
                             group_size: int) -> np.ndarray:
    """int64 ``acc[m, n, g] = sum_{k in g} (xq[m, k] - zp[m]) * q[n, k]`` for int8 ``xq [M, K]``,
    zero points ``zp [M]`` and int4 values ``q [N, K]`` in [-8, 7]."""
    xd = _centered(xq, zp, group_size)
    return np.einsum("mgk,ngk->mng", xd, np.asarray(q, np.int64).reshape(-1, *xd.shape[1:]))


def _centered(xq: np.ndarray, zp: np.ndarray, group_size: int) -> np.ndarray:
    """int64 ``xq - zp`` per row, as ``[M, n_groups, group_size]``."""
    m, k = xq.shape
    xd = np.asarray(xq, np.int64) - np.asarray(zp, np.int64)[:, None]
    return xd.reshape(m, k // group_size, group_size)


def _terms(x2: np.ndarray, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
           group_size: int, absolute: bool) -> tuple[np.ndarray, np.ndarray]:
    """(s_x [M], sum_g of the group terms [M, N]) in float64; `absolute` sums their
    magnitudes per k instead (what the float32 rounding errors scale with)."""
    xq, s_x, zp = quantize_per_token_reference(x2)
    xd = _centered(xq, zp, group_size)
    qw = np.asarray(q, np.int64).reshape(-1, *xd.shape[1:])
    s64 = np.asarray(scales, np.float64)
    if absolute:
        xd, qw, s64 = np.abs(xd), np.abs(qw), np.abs(s64)
    acc = np.einsum("mgk,ngk->mng", xd, qw).astype(np.float64)
    total = np.einsum("mng,ng->mn", acc, s64)
    if zeros is not None:
        z64 = np.abs(np.asarray(zeros, np.float64)) if absolute else np.asarray(zeros, np.float64)
        total += xd.sum(axis=2).astype(np.float64) @ z64.T
    return s_x.astype(np.float64), total


def qta8a_qga4w_linear_reference(x: np.ndarray, q: np.ndarray, scales: np.ndarray,
                                 zeros: np.ndarray | None, group_size: int,
                                 bias: np.ndarray | None = None) -> np.ndarray:
    """float64 ``y [..., N]`` for float ``x [..., K]`` and int4 weights: values ``q [N, K]``,
    ``scales`` (and ``zeros``) ``[N, K // group_size]`` (module docstring)."""
    x = np.asarray(x, np.float32)
    lead, k = x.shape[:-1], x.shape[-1]
    s_x, total = _terms(x.reshape(-1, k), q, scales, zeros, group_size, absolute=False)
    with np.errstate(invalid="ignore"):
        y = s_x[:, None] * total
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.reshape(*lead, -1)


def qta8a_error_bound(x: np.ndarray, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                      group_size: int, bias: np.ndarray | None = None) -> np.ndarray:
    """A bound on |y_kernel - y_reference| per output, from the float32 epilogue.

    The integers are exact, so only the float part errs. Every kernel forms y as
    s_x * (sum of terms) + bias, a term being scale * float(an exact integer part: a word, an
    8-k component or a group) plus, for asymmetric weights, zero * float(its activation sum):
    at most T = 2 * ceil(K / 8) terms (one or two per component). float(integer) is exact
    below 2^24 and one rounding above; each term costs one rounding (an fma into the running
    sum, or a product); summing T terms in any order (lanes, subgroups, shared-memory trees)
    errs by at most (T - 1) * u * sum|terms|; the s_x multiply and the bias add one rounding
    each. With A = sum over k of |scale * (xq - zp) * q| + |zero * (xq - zp)| (>= sum|terms|),
    first order: |err| <= (T + 4) * u * (|s_x| * A + |bias|). Where the reference is NaN
    (NaN/Inf rows) the bound is NaN and the caller compares NaN-ness instead.
    """
    x = np.asarray(x, np.float32)
    lead, k = x.shape[:-1], x.shape[-1]
    s_x, a = _terms(x.reshape(-1, k), q, scales, zeros, group_size, absolute=True)
    t = 2 * -(-k // 8)
    with np.errstate(invalid="ignore"):
        mag = np.abs(s_x)[:, None] * a
    if bias is not None:
        mag = mag + np.abs(np.asarray(bias, np.float64))
    return ((t + 4) * U * mag + 1e-37).reshape(*lead, -1)
