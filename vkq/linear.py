"""`vkq.linear`: one entry point for every quantized linear layer; routes by weight type."""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.quantized_weight import QuantizedWeight
from vkq.runtime import Device
from vkq.tensor import DeviceTensor

_INT8_QPARAMS = ("input_scale", "input_zero_point", "output_scale", "output_zero_point")


def linear(x: np.ndarray | DeviceTensor, w: Any, bias: np.ndarray | None = None, *,
           input_scale: float | None = None, input_zero_point: int | None = None,
           output_scale: float | None = None, output_zero_point: int | None = None,
           activation: str = "none", kernel: str = "auto",
           device: Device | None = None) -> np.ndarray | DeviceTensor:
    """`y = x @ dequant(w).T + bias` for quantized weights `w` `[N, K]`.

    int8 weights (`w.bits == 8`, docs/design.md §3 q8ta): `x` is int8 `[..., K]` quantized with
    (`input_scale`, `input_zero_point`); the result is int8 `[..., N]` requantized with
    (`output_scale`, `output_zero_point`); `activation` is "none" or "relu".

    int4 weights (`w.bits == 4`, q4gsw): `x` is float `[..., K]`, the result float32 `[..., N]`;
    the int8 quantization arguments must be left unset. `w` may also be a `Q4gswWeight`
    built from already-packed data with `vkq.ops.q4gsw_linear.prepack_q4gsw`.

    `kernel`: "auto" (GEMV for M == 1 where the shape allows, else GEMM), "gemv" or "gemm".
    A `DeviceTensor` input stays on the device and gives a `DeviceTensor` result.
    """
    from vkq.ops import q4gsw_linear
    if not isinstance(w, (QuantizedWeight, q4gsw_linear.Q4gswWeight)):
        raise TypeError(f"w must be a vkq.QuantizedWeight (see vkq.quantize_weight) or a prepacked "
                        f"Q4gswWeight (vkq.ops.q4gsw_linear.prepack_q4gsw), got {type(w).__name__}")
    if kernel not in ("auto", "gemv", "gemm"):
        raise ValueError(f"kernel must be 'auto', 'gemv' or 'gemm', got {kernel!r}")
    qparams = dict(zip(_INT8_QPARAMS, (input_scale, input_zero_point, output_scale, output_zero_point)))
    if isinstance(w, QuantizedWeight) and w.bits == 8:
        from vkq.ops import q8ta_linear
        missing = [k for k, v in qparams.items() if v is None]
        if missing:
            raise TypeError(f"int8 linear needs {', '.join(missing)}")
        return q8ta_linear.linear(x, w, bias, **qparams, activation=activation, kernel=kernel,
                                  device=device)
    given = [k for k, v in qparams.items() if v is not None]
    if given:
        raise TypeError(f"int4 weight-only linear takes float activations: {', '.join(given)} "
                        f"must not be given")
    if activation != "none":
        raise ValueError("int4 weight-only linear has no fused activation")
    return q4gsw_linear.linear(x, w, bias, kernel=kernel, device=device)
