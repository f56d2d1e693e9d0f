"""Elementwise references: residual add, mul, silu and SwiGLU's silu(gate) * up, in float32 like the
kernels (silu's exp may differ from the GPU's by a few ulp; tests bound that)."""
from __future__ import annotations

import numpy as np


def add_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)


def mul_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a, np.float32) * np.asarray(b, np.float32)).astype(np.float32)


def _silu64(x: np.ndarray) -> np.ndarray:
    g = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return g / (1.0 + np.exp(-g))


def silu_reference(x: np.ndarray) -> np.ndarray:
    """silu(x) = x / (1 + exp(-x)), float64 math, float32 result."""
    return _silu64(x).astype(np.float32)


def silu_mul_reference(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up = gate / (1 + exp(-gate)) * up, float64 math, float32 result."""
    return (_silu64(gate) * np.asarray(up, np.float64)).astype(np.float32)
