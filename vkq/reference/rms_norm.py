"""rms_norm reference (docs/design.md §3): y = x * rsqrt(mean(x^2) + eps) * weight."""
from __future__ import annotations

import numpy as np


def rms_norm_reference(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float64 math, float32 result.

    Like the kernel (rms_norm.comp.j2), each row is first scaled by 2^-e with 2^(e-1) <=
    max|x| < 2^e, and y = x' / sqrt(mean(x'^2) + eps * 2^-2e) * weight with x' = x * 2^-e:
    the same number as the formula above (powers of two scale exactly), whose mean square can
    neither overflow nor underflow. Rows with NaN or Inf are left unscaled and give what the
    formula gives (NaN where x is inf, 0 elsewhere in an inf row).
    """
    x64 = np.asarray(x, dtype=np.float64)
    amax = np.max(np.abs(x64), axis=-1, keepdims=True)
    e = np.where(np.isfinite(amax), np.frexp(amax)[1], 0)
    xs = np.ldexp(x64, -e)
    ms = np.mean(xs * xs, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):  # inf / inf in inf rows, as the formula gives
        y = xs / np.sqrt(ms + np.ldexp(float(eps), -2 * e)) * np.asarray(weight, dtype=np.float64)
    return y.astype(np.float32)
