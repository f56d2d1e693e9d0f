"""Per-token int8 quantization ops (docs/design.md §2; quantize_per_token.comp.j2,
dequantize_per_token.comp.j2): PyTorch's `choose_qparams_per_token_asymmetric` +
`quantize_per_token`, and `dequantize_per_token`, bit for bit (vkq/reference/per_token.py).

- "quantize_per_token": input "x" dense float32 [..., K]; outputs "xq" dense int8 [..., K],
  "scales" float32 [...], "zero_points" int32 [...]. One workgroup per row computes the row's
  parameters and, when K % 4 == 0, writes its int8 words; otherwise a second, elementwise
  pass writes the words (a word then holds bytes of two rows).
- "dequantize_per_token": inputs "xq" dense int8 [..., K], "scales" float32 and "zero_points"
  int32 shaped [...] (or [..., 1], as PyTorch keeps them); output "y" float32 [..., K].

int8 tensors are dense arrays that the kernels read and write as int32 words (device
buffers are rounded up to 16 bytes, so the last word is always in bounds).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq.ops.common import ceil_div, check_fits, dense_need, grid_2d, require_dense_f32
from vkq.ops.contract import DENSE, Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.reference.per_token import dequantize_per_token_reference, quantize_per_token_reference
from vkq.shaderlib import variant_name

WORKGROUP = 256  # the elementwise passes' local size


def check_rows(op: str, k: int, rows: int) -> None:
    """The kernels index elements with 32-bit integers and need a non-empty last axis."""
    if k == 0:
        raise ValueError(f"{op}: x must have a non-empty last axis [..., K]")
    if rows * k >= 1 << 32:
        raise ValueError(f"{op}: {rows} x {k} elements exceed the kernels' 32-bit index")


def quantize_rows_variant(caps: Any) -> str:
    """The one-workgroup-per-row pass, with subgroup reductions where the device has them."""
    return variant_name("quantize_per_token", SUBGROUP=bool(caps.subgroup_arithmetic))


@register
class QuantizePerToken(Op):
    """x [..., K] float32 -> (xq int8 [..., K], scales float32 [...], zero_points int32 [...]).
    Attribute "div_skew" (tests only) offsets the kernels' first division estimate by that
    many ulps (per_token_quant.glsl)."""

    name = "quantize_per_token"
    reference = staticmethod(quantize_per_token_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        require_dense_f32(self.name, "x", x, "[..., K]")
        k, rows, lead = x.shape[-1], x.rows, x.shape[:-1]
        check_rows(self.name, k, rows)
        check_fits(device.caps, [dense_need("float32 activations x", (rows, k))])
        outputs = {"xq": TensorSpec.dense(x.shape, np.int8), "scales": TensorSpec.dense(lead),
                   "zero_points": TensorSpec.dense(lead, np.int32)}
        spec = {"DIV_SKEW": int(attrs["div_skew"])} if attrs.get("div_skew") else {}
        max_x = device.caps.max_workgroup_count[0]
        dispatches = [PlannedDispatch(
            quantize_rows_variant(device.caps), grid_2d(rows, max_x),
            {"t_q": "xq", "t_scales": "scales", "t_zps": "zero_points", "t_x": "x"},
            {"n_rows": rows, "k": k, "write_q": int(k % 4 == 0)}, spec)]
        if k % 4:
            dispatches.append(PlannedDispatch(
                variant_name("quantize_per_token_flat"),
                grid_2d(ceil_div(rows * k, 4 * WORKGROUP), max_x),
                {"t_q": "xq", "t_x": "x", "t_scales": "scales", "t_zps": "zero_points"},
                {"total": rows * k, "k": k}, spec))
        return Plan(dispatches if rows else [], outputs)


@register
class DequantizePerToken(Op):
    """(xq int8 [..., K], scales float32 [...], zero_points int32 [...]) -> float32 [..., K]."""

    name = "dequantize_per_token"
    reference = staticmethod(dequantize_per_token_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        xq = inputs["xq"]
        if xq.layout != DENSE or xq.dtype != np.int8 or not xq.shape:
            raise TypeError(f"{self.name}: xq must be a dense int8 [..., K] tensor, got "
                            f"{xq.describe()}")
        k, rows, lead = xq.shape[-1], xq.rows, xq.shape[:-1]
        check_rows(self.name, k, rows)
        for role, dtype in (("scales", np.float32), ("zero_points", np.int32)):
            spec = inputs[role]
            if spec.layout != DENSE or spec.dtype != dtype:
                raise TypeError(f"{self.name}: {role} must be a dense {np.dtype(dtype)} tensor, "
                                f"got {spec.describe()}")
            if spec.shape not in (lead, lead + (1,)):
                raise ValueError(f"{self.name}: {role} must have shape {lead} (one per row of "
                                 f"xq {xq.shape}), got {spec.shape}")
        check_fits(device.caps, [dense_need("float32 output y", (rows, k))])
        groups = grid_2d(ceil_div(rows * k, 4 * WORKGROUP), device.caps.max_workgroup_count[0])
        d = PlannedDispatch(variant_name("dequantize_per_token"), groups,
                            {"t_y": "y", "t_q": "xq", "t_scales": "scales", "t_zps": "zero_points"},
                            {"total": rows * k, "k": k})
        return Plan([d] if rows else [], {"y": TensorSpec.dense(xq.shape)})


def describe_variants(caps: Any) -> dict[str, str]:
    return {"quantize_per_token": quantize_rows_variant(caps),
            "quantize_per_token (K % 4 != 0, second pass)": variant_name("quantize_per_token_flat")}
