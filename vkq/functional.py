"""Public elementwise, normalization and lookup ops: `vkq.rms_norm`, `vkq.add`, `vkq.mul`,
`vkq.silu`, `vkq.silu_mul`, `vkq.take_rows`.

Each takes numpy arrays (result: numpy), DeviceTensors (result: a DeviceTensor, returned
without waiting for the GPU) or, inside `with vkq.graph() as g:`, graph values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.execute import run_op
from vkq.ops.common import float_tensor, rms_norm_params
from vkq.ops.positions import check_position
from vkq.runtime import Device

Tensor = Any  # numpy array | vkq.DeviceTensor | vkq.graph.Value


def rms_norm(x: Tensor, weight: np.ndarray, eps: float = 1e-6, *,
             device: Device | None = None) -> Tensor:
    """`x * rsqrt(mean(x**2, axis=-1) + eps) * weight` over the last axis, fp32 sums.

    Args:
        x: float `[..., W]` (numpy, float32 DeviceTensor, or graph value).
        weight: float array `[W]` (a constant: uploaded per eager call, once per graph).
        eps: added to the mean square, finite and > 0.
    Returns:
        float32 shaped like x (numpy for numpy x, else like x).
    """
    xi = float_tensor("x", x)
    w, eps = rms_norm_params(weight, eps, xi.spec.shape[-1] if xi.spec.shape else 0)
    return run_op("rms_norm", {"x": xi}, {"eps": eps}, constants={"weight": w}, device=device)["y"]


def add(a: Tensor, b: Tensor, *, device: Device | None = None) -> Tensor:
    """`a + b` for float32 tensors of one shape (a decoder layer's residual add)."""
    return run_op("add", {"a": float_tensor("a", a), "b": float_tensor("b", b)}, device=device)["out"]


def mul(a: Tensor, b: Tensor, *, device: Device | None = None) -> Tensor:
    """`a * b` for float32 tensors of one shape."""
    return run_op("mul", {"a": float_tensor("a", a), "b": float_tensor("b", b)}, device=device)["out"]


def silu(x: Tensor, *, device: Device | None = None) -> Tensor:
    """`silu(x) = x / (1 + exp(-x))` elementwise, float32."""
    return run_op("silu", {"x": float_tensor("x", x)}, device=device)["out"]


def take_rows(table: Tensor, index: Any, rows: int = 1, *, device: Device | None = None) -> Tensor:
    """Rows `[index, index + rows)` of a float32 table `[T, W]` (an embedding lookup; a row of
    a cos/sin table). `index` is an int, or inside a graph a `g.param(...)` that each replay
    sets. Keep large tables on the device (`vkq.to_device`): a host table is uploaded per
    eager call."""
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
        raise ValueError(f"rows must be an integer >= 0, got {rows!r}")
    return run_op("take_rows", {"table": float_tensor("table", table)},
                  {"index": check_position(index, "index"), "rows": int(rows)}, device=device)["y"]


def silu_mul(x: Tensor, *, device: Device | None = None) -> Tensor:
    """SwiGLU's `silu(gate) * up` where `x = [..., 2n]` holds gate then up; result `[..., n]`."""
    return run_op("silu_mul", {"x": float_tensor("x", x)}, device=device)["out"]
