"""`vkq.linear`: one entry point for every quantized linear layer.

The op comes from the registry (vkq.ops.contract.LINEAR_OPS) by (weight kind, activation
kind): int4 weights with float activations run q4gsw_linear, int8 weights with int8
activations q8ta_linear.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.execute import HostTensor, run_op
from vkq.functional import as_input
from vkq.fused import FusedWeight
from vkq.ops import contract
from vkq.ops.common import bias_vector, check_fits, dense_need
from vkq.ops.q4gsw_linear import Q4gswWeight
from vkq.quantized_weight import QuantizedWeight
from vkq.runtime import Device, default_device

_INT8_QPARAMS = ("input_scale", "input_zero_point", "output_scale", "output_zero_point")


def _weight_kind(w: Any) -> str:
    if isinstance(w, Q4gswWeight):
        return "int4"
    if isinstance(w, QuantizedWeight):
        return f"int{w.bits}"
    raise TypeError(f"w must be a vkq.QuantizedWeight (see vkq.quantize_weight), a FusedWeight "
                    f"(vkq.fuse_linear) or a prepacked Q4gswWeight "
                    f"(vkq.ops.q4gsw_linear.prepack_q4gsw), got {type(w).__name__}")


def linear(x: Any, w: Any, bias: np.ndarray | None = None, *, residual: Any = None,
           input_scale: float | None = None, input_zero_point: int | None = None,
           output_scale: float | None = None, output_zero_point: int | None = None,
           activation: str = "none", kernel: str = "auto", device: Device | None = None) -> Any:
    """`y = x @ dequant(w).T + bias (+ residual)` for quantized weights `w` `[N, K]`.

    int8 weights (`w.bits == 8`, docs/design.md §3 q8ta): `x` is int8 `[..., K]` quantized
    with (`input_scale`, `input_zero_point`); the result is int8 `[..., N]` requantized with
    (`output_scale`, `output_zero_point`); `activation` is "none" or "relu".

    int4 weights (`w.bits == 4`, q4gsw): `x` is float `[..., K]`, the result float32
    `[..., N]`; the int8 quantization arguments must be left unset. `residual` (float
    `[..., N]`) is added to the result (a decoder layer's skip connection). `w` may also be a
    `Q4gswWeight` built from packed data (vkq.ops.q4gsw_linear.prepack_q4gsw), or a
    `FusedWeight` (vkq.fuse_linear): then the result is a tuple with one array per fused
    weight, or silu(gate) * up for epilogue="silu_mul".

    `x` may be a numpy array (the result is numpy), a `DeviceTensor` (the result is a
    DeviceTensor, returned without waiting for the GPU) or a graph value inside
    `with vkq.graph()` (the result is a graph value).
    `kernel`: "auto", "gemv" or "gemm" (forces a path; see the op modules).
    """
    fused = w if isinstance(w, FusedWeight) else None
    base = fused.weight if fused else w
    kind = _weight_kind(base)
    if kernel not in ("auto", "gemv", "gemm"):
        raise ValueError(f"kernel must be 'auto', 'gemv' or 'gemm', got {kernel!r}")
    qparams = dict(zip(_INT8_QPARAMS, (input_scale, input_zero_point, output_scale, output_zero_point)))
    if kind == "int8":
        if fused or residual is not None:
            raise ValueError("int8 linear layers take neither fused weights nor residual= yet")
        from vkq.ops import q8ta_linear
        missing = [k for k, v in qparams.items() if v is None]
        if missing:
            raise TypeError(f"int8 linear needs {', '.join(missing)}")
        return q8ta_linear.linear(x, base, bias, **qparams, activation=activation, kernel=kernel,
                                  device=device)
    given = [k for k, v in qparams.items() if v is not None]
    if given:
        raise TypeError(f"int4 weight-only linear takes float activations: {', '.join(given)} "
                        f"must not be given")
    if activation != "none":
        raise ValueError("int4 weight-only linear has no fused activation; fuse gate and up "
                         "with vkq.fuse_linear(..., epilogue='silu_mul')")
    op_name = contract.LINEAR_OPS.get((kind, "float")) or _load_linear_op(kind, "float")
    inputs = {"x": as_input("x", x)}
    if residual is not None:
        inputs["residual"] = as_input("residual", residual)
    b32 = bias_vector(bias, base.shape[0])
    _check_sizes(inputs["x"], base, device)
    attrs = {"kernel": kernel, "has_bias": b32 is not None,
             "parts": fused.parts if fused else None, "epilogue": fused.epilogue if fused else None}
    out = run_op(op_name, inputs, attrs, weight=base, constants={"bias": b32}, device=device)
    if fused and fused.epilogue is None:
        return tuple(out[f"y{i}"] for i in range(len(fused.parts)))
    return out["y"]


def _check_sizes(x: Any, w: Any, device: Device | None) -> None:
    """x and y against the device's buffer limits, before the weight is packed."""
    spec = x.spec
    if not spec.shape:
        return
    target = device or getattr(w, "device", None) or getattr(x, "device", None) or default_device()
    m, (n, k) = spec.rows, w.shape
    check_fits(target.caps, [dense_need("float32 output y", (m, n))]
               + ([dense_need("float32 activations x", (m, k))] if isinstance(x, HostTensor) else []))


def _load_linear_op(weight_kind: str, activation: str) -> str:
    contract.get("q4gsw_linear")  # imports the op modules, which register their linear ops
    try:
        return contract.LINEAR_OPS[weight_kind, activation]
    except KeyError:
        raise TypeError(f"no linear op takes {weight_kind} weights with {activation} "
                        f"activations") from None
