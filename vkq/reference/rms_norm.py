"""rms_norm reference (docs/design.md §3): y = x * rsqrt(mean(x^2) + eps) * weight."""
from __future__ import annotations

import numpy as np


def rms_norm_reference(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float64 math, float32 result."""
    x64 = np.asarray(x, dtype=np.float64)
    ms = np.mean(x64 * x64, axis=-1, keepdims=True)
    return (x64 / np.sqrt(ms + eps) * np.asarray(weight, dtype=np.float64)).astype(np.float32)
