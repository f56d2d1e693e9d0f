"""Public per-token int8 quantization: `vkq.quantize_per_token`, `vkq.dequantize_per_token`.

Dynamic, per row, asymmetric: PyTorch's `quantized_decomposed` ops bit for bit (docs/design.md
§2, vkq/reference/per_token.py), so a model exported from PyTorch gets the same int8 values.
Both take numpy arrays (results: numpy), DeviceTensors (results: DeviceTensors, returned
without waiting for the GPU) or, inside `with vkq.graph() as g:`, graph values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.execute import run_op
from vkq.ops.common import float_input, float_tensor
from vkq.ops.contract import HostTensor, TensorSpec
from vkq.runtime import Device

Tensor = Any  # numpy array | vkq.DeviceTensor | vkq.graph.Value


def quantize_per_token(x: Tensor, *, device: Device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize each row of `x` to int8 with its own scale and zero point.

    Args:
        x: float `[..., K]`, K >= 1 (numpy, float32 DeviceTensor, or graph value).
    Returns:
        `(xq, scales, zero_points)`: int8 `[..., K]`, float32 `[...]` (> 0) and int32 `[...]`
        (in [-128, 127]), with `xq = clamp(rint(x * (1 / scale) + zp), -128, 127)`. A row
        holding NaN or +-Inf gets scale NaN, zero point 0 and values 0 (its dequantized values
        are NaN; other rows are unaffected).
    """
    out = run_op("quantize_per_token", {"x": float_tensor("x", x)}, device=device)
    return out["xq"], out["scales"], out["zero_points"]


def dequantize_per_token(xq: Tensor, scales: Tensor, zero_points: Tensor, *,
                         device: Device | None = None) -> Tensor:
    """float32 `(xq - zero_points) * scales` per row.

    Args:
        xq: int8 `[..., K]`.
        scales: float `[...]` or `[..., 1]` (PyTorch's keepdim shape), one per row.
        zero_points: integers in [-128, 127], shaped like `scales`.
    """
    inputs = {"xq": _int8_tensor(xq), "scales": _host(scales, _scales),
              "zero_points": _host(zero_points, _zero_points)}
    return run_op("dequantize_per_token", inputs, device=device)["y"]


def _host(t: Any, convert: Any) -> Any:
    """A DeviceTensor or graph value as is, a host array converted."""
    if hasattr(t, "spec") and not isinstance(t, np.ndarray):
        return t
    arr = convert(t)
    return HostTensor(TensorSpec.dense(arr.shape, arr.dtype), arr)


def _int8_tensor(xq: Any) -> Any:
    if hasattr(xq, "spec") and not isinstance(xq, np.ndarray):
        return xq
    arr = np.asarray(xq)
    if arr.dtype != np.int8:
        raise TypeError(f"xq must be an int8 array (quantized values), got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError("xq must have at least one dimension [..., K]")
    arr = np.ascontiguousarray(arr)
    return HostTensor(TensorSpec.dense(arr.shape, np.int8), arr)


def _scales(s: Any) -> np.ndarray:
    return float_input("scales", s, ndim_min=0)


def _zero_points(z: Any) -> np.ndarray:
    arr = np.asarray(z)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"zero_points must be an integer array, got dtype {arr.dtype}")
    if arr.size and (arr.min() < -128 or arr.max() > 127):
        raise ValueError(f"zero_points must be in [-128, 127] (int8), found "
                         f"[{int(arr.min())}, {int(arr.max())}]")
    return np.ascontiguousarray(arr, dtype=np.int32)
