"""`vkq.linear`: one entry point for every quantized linear layer.

The op comes from the registry (vkq.ops.contract.LINEAR_OPS) by (weight kind, activation
kind): int4 weights with float activations run q4gsw_linear, int8 weights with int8
activations q8ta_linear, int4 weights with float activations quantized per token
(act_quant="int8") qta8a_qga4w_linear.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.execute import run_op
from vkq.fused import FusedWeight
from vkq.ops import contract, op_modules
from vkq.ops.common import check_linear_kernel
from vkq.ops.q4gsw_linear import Q4gswWeight
from vkq.quantized_weight import QuantizedWeight
from vkq.runtime import Device


def _weight_kind(w: Any) -> str:
    if isinstance(w, Q4gswWeight):
        return "int4"
    if isinstance(w, QuantizedWeight):
        return f"int{w.bits}"
    raise TypeError(f"w must be a vkq.QuantizedWeight (see vkq.quantize_weight), a FusedWeight "
                    f"(vkq.fuse_linear) or a prepacked Q4gswWeight "
                    f"(vkq.ops.q4gsw_linear.prepack_q4gsw), got {type(w).__name__}")


def linear(x: Any, w: Any, bias: np.ndarray | None = None, *, residual: Any = None,
           rms_norm: tuple[np.ndarray, float] | None = None,
           input_scale: float | None = None, input_zero_point: int | None = None,
           output_scale: float | None = None, output_zero_point: int | None = None,
           activation: str = "none", kernel: str = "auto", act_quant: str | None = None,
           device: Device | None = None) -> Any:
    """`y = x @ dequant(w).T + bias (+ residual)` for quantized weights `w` `[N, K]`.

    int8 weights (`w.bits == 8`, docs/design.md §3 q8ta): `x` is int8 `[..., K]` quantized
    with (`input_scale`, `input_zero_point`); the result is int8 `[..., N]` requantized with
    (`output_scale`, `output_zero_point`); `activation` is "none" or "relu".

    int4 weights (`w.bits == 4`, q4gsw): `x` is float `[..., K]`, the result float32
    `[..., N]`; the int8 quantization arguments must be left unset. `residual` (float
    `[..., N]`) is added to the result (a decoder layer's skip connection). `rms_norm`
    (`(weight [K], eps)`) normalizes x first: the result is `linear(vkq.rms_norm(x, weight,
    eps), w)`, with the norm folded into the one-row GEMV (no dispatch of its own). `w` may also be a
    `Q4gswWeight` built from packed data (vkq.ops.q4gsw_linear.prepack_q4gsw), or a
    `FusedWeight` (vkq.fuse_linear): then the result is a tuple with one array per fused
    weight, or silu(gate) * up for epilogue="silu_mul".

    `act_quant="int8"` (int4 weights): `x` (float `[..., K]`) is quantized per token to int8
    on the GPU (as `vkq.quantize_per_token`, PyTorch's dynamic per-token scheme) and meets the
    int4 weights in integer dot products; the result is float32 `[..., N]` (docs/design.md
    §3 qta8a_qga4w; one submit, two dispatches). `kernel="auto"` may run the weight-only
    path instead where that is faster (M = 1: vkq.ops.qta8a_qga4w_linear.WEIGHT_ONLY_MAX_ROWS);
    `kernel="gemv"` or `"gemm"` always quantizes. `residual`, `rms_norm` and fused weights
    work with it too (the norm and the epilogues as dispatches of their own around the int8
    kernels).

    `x` may be a numpy array (the result is numpy), a `DeviceTensor` (the result is a
    DeviceTensor, returned without waiting for the GPU) or a graph value inside
    `with vkq.graph()` (the result is a graph value).
    `kernel`: "auto" (the op's routing), "gemv", "gemm" (the GEMM on CUDA cores: fp32 or
    integer dot products) or "coopmat" (the GEMM on tensor cores; ValueError where the device
    or the weight cannot); see the op modules.
    """
    base = w.weight if isinstance(w, FusedWeight) else w
    kind = _weight_kind(base)
    check_linear_kernel(kernel)
    op = contract.get(_linear_op(kind, _activation_kind(kind, act_quant)))
    call = op.linear_call(x, w, bias, dict(
        residual=residual, rms_norm=rms_norm, input_scale=input_scale, input_zero_point=input_zero_point,
        output_scale=output_scale, output_zero_point=output_zero_point, activation=activation,
        kernel=kernel, device=device))
    if call.immediate is not None:
        return call.immediate
    out = run_op(op.name, call.inputs, call.attrs, weight=call.weight, constants=call.constants,
                 device=device)
    return call.finish(out)


#: act_quant values vkq.linear takes (None: activations as given).
ACT_QUANT = (None, "int8")


def _activation_kind(weight_kind: str, act_quant: Any) -> str:
    """The registry's activation kind: what x is, and what the op does with it."""
    if act_quant not in ACT_QUANT:
        raise ValueError(f"act_quant must be None or 'int8' (dynamic per-token int8 "
                         f"activations), got {act_quant!r}")
    if act_quant is None:
        return "int8" if weight_kind == "int8" else "float"
    if weight_kind != "int4":
        raise TypeError(f"act_quant='int8' quantizes float activations for int4 weights; "
                        f"{weight_kind} weights take int8 activations with input_scale and "
                        f"input_zero_point instead")
    return "dynamic_int8"


def _linear_op(weight_kind: str, activation: str) -> str:
    if (weight_kind, activation) not in contract.LINEAR_OPS:
        op_modules()  # importing the op modules registers their linear ops
    try:
        return contract.LINEAR_OPS[weight_kind, activation]
    except KeyError:
        raise TypeError(f"no linear op takes {weight_kind} weights with {activation} "
                        f"activations") from None
