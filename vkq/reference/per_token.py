"""Per-token (per row) asymmetric int8 quantization (docs/design.md §2): PyTorch's
`quantized_decomposed.choose_qparams_per_token_asymmetric` + `quantize_per_token` /
`dequantize_per_token`, in float32 with the same operations in the same order, so the int8
values, scales and zero points are PyTorch's bit for bit (given float32 scales, int32 zero
points):

    lo = min(min(x), 0), hi = max(max(x), 0)
    scale = max((hi - lo) / 255, eps)                     eps = float32 eps = 2^-23
    dmin = lo / scale, dmax = hi / scale
    zp = rint(clamp(-128 - dmin if (-128 + dmin) + (127 + dmax) > 0 else 127 - dmax, -128, 127))
    q = clamp(rint(x * (1 / scale) + zp), -128, 127)      (rint: round half to even)
    dequantized = (q - zp) * scale

A constant or all-zero row still works (scale eps). A row holding NaN or +-Inf, where
PyTorch's result is undefined (NaN cast to an integer), gets scale NaN, zero point 0 and values
0 here and in the kernels: its dequantized values and its linear outputs are NaN, other rows
are unaffected.
"""
from __future__ import annotations

import numpy as np

EPS = np.float32(np.finfo(np.float32).eps)
QMIN, QMAX = -128, 127


def choose_qparams_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 scales and int32 zero points `[...]` of float `x [..., K]` (module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last axis [..., K], got shape {x.shape}")
    finite = np.isfinite(x)
    rows_ok = finite.all(axis=-1)
    xf = np.where(finite, x, np.float32(0))  # non-finite rows are overwritten below
    f32 = np.float32
    lo = np.minimum(xf.min(axis=-1), f32(0))
    hi = np.maximum(xf.max(axis=-1), f32(0))
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.maximum((hi - lo) / f32(QMAX - QMIN), EPS)
        dmin, dmax = lo / scale, hi / scale
        from_min = (f32(QMIN) + dmin) + (f32(QMAX) + dmax) > 0
        zp = np.where(from_min, f32(QMIN) - dmin, f32(QMAX) - dmax)
    zp = np.rint(np.clip(zp, QMIN, QMAX))
    scale = np.where(rows_ok, scale, f32(np.nan)).astype(np.float32)
    zp = np.where(rows_ok, zp, 0).astype(np.int32)
    return scale, zp


def quantize_per_token_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(xq int8 [..., K], scales float32 [...], zero_points int32 [...])` of float `x`."""
    x = np.asarray(x, dtype=np.float32)
    scale, zp = choose_qparams_per_token(x)
    return quantize_with(x, scale, zp), scale, zp


def quantize_with(x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """int8 `clamp(rint(x * (1 / scale) + zp), -128, 127)` per row; rows whose scale is NaN
    (non-finite rows) are 0."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = np.float32(1) / scale
        v = x * inv[..., None] + np.asarray(zp, np.float32)[..., None]  # two float32 roundings
        q = np.clip(np.rint(v), QMIN, QMAX)
    q = np.where(np.isnan(scale)[..., None] | np.isnan(q), 0, q)
    return q.astype(np.int8)


def dequantize_per_token_reference(xq: np.ndarray, scales: np.ndarray,
                                   zero_points: np.ndarray) -> np.ndarray:
    """float32 `(xq - zp) * scale` per row (`scales`, `zero_points` shaped `xq.shape[:-1]`)."""
    diff = np.asarray(xq, np.int32) - np.asarray(zero_points, np.int32)[..., None]
    with np.errstate(over="ignore", invalid="ignore"):
        return diff.astype(np.float32) * np.asarray(scales, np.float32)[..., None]
