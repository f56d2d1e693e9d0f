"""Small checks and helpers shared by op modules."""
from __future__ import annotations

from typing import Any

import numpy as np


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def float_input(name: str, x: Any, ndim_min: int = 1) -> np.ndarray:
    """A float32 C-contiguous copy/view of a float array (float16/64 accepted and converted)."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimension(s), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def positive_finite(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {v!r}") from None
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return f


def grid_2d(n_groups: int, max_x: int) -> tuple[int, int, int]:
    """Spread a 1-D workgroup count over x and y when it exceeds the device's x limit;
    shaders recover the linear id as x + y * gl_NumWorkGroups.x and skip ids past the end."""
    if n_groups <= max_x:
        return (max(n_groups, 0), 1, 1)
    return (max_x, ceil_div(n_groups, max_x), 1)


def bias_vector(bias: Any, n: int) -> np.ndarray | None:
    """None, or a float32 copy of a finite float bias of shape (n,). NaN/Inf are refused by
    every op alike: int8 outputs cannot carry them, and a float output whose every row is NaN
    is never what a bias was meant to give (NaN/Inf in float activations still propagate as
    the references say)."""
    if bias is None:
        return None
    b = np.asarray(bias)
    if b.dtype.kind != "f":
        raise TypeError(f"bias must be a float array, got dtype {b.dtype}")
    if b.shape != (n,):
        raise ValueError(f"bias must have shape ({n},) (one per output channel), got {b.shape}")
    b = np.ascontiguousarray(b, dtype=np.float32)
    if not np.all(np.isfinite(b)):
        raise ValueError("bias must be finite (found NaN or Inf after conversion to float32)")
    return b


def wrong_device_input(x: Any, takes: str, instead: str) -> str:
    """The message for a DeviceTensor `x` holding another kind of activations than an op
    takes: what the op takes, what x is, and what to pass instead."""
    return (f"{takes}; this DeviceTensor is {x.dtype} in layout {x.format!r}: "
            f"pass {instead} instead")
