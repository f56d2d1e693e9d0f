"""Elementwise ops between a decoder layer's linears (elementwise.comp.j2): the residual add,
SwiGLU's silu(gate) * up, and taking columns out of a fused output; plain mul and silu (for
graphs converted from PyTorch, vkq.from_torch). One thread per output
element; float32 in and out."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from vkq.ops.common import ceil_div, grid_2d, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, output_y, register
from vkq.reference.elementwise import (add_reference, mul_reference, silu_mul_reference,
                                       silu_reference)
from vkq.runtime.memory import RANGE_ALIGN
from vkq.shaderlib import variant_name

WORKGROUP = 256  # elementwise.comp.j2's local size


def elementwise_dispatch(op: str, device: Any, rows: int, cols: int, stride: int, off: int,
                         buffers: dict[str, str], step: int = 1) -> PlannedDispatch:
    """One elementwise.comp.j2 dispatch of `op` ("add", "mul", "silu", "silu_mul", "copy_cols") over
    [rows, cols] outputs (see the template)."""
    variant = variant_name("elementwise", OP=op)
    total = rows * cols
    if total >= 1 << 32:
        raise ValueError(f"{variant}: {total} elements exceed the kernel's 32-bit index")
    return PlannedDispatch(variant, grid_2d(ceil_div(total, WORKGROUP), device.caps.max_workgroup_count[0]),
                           buffers, {"rows": rows, "cols": cols, "stride": stride, "off": off,
                                     "step": step})


def _same_shape_plan(op: str, device: Any, spec: TensorSpec, buffers: dict[str, str]) -> Plan:
    """One dispatch of `op` whose output "out" has `spec`'s shape, element for element."""
    cols = spec.shape[-1] if spec.shape else 1
    rows = spec.rows if spec.shape else 1
    d = elementwise_dispatch(op, device, rows, cols, cols, 0, buffers)
    return Plan([d], {"out": TensorSpec.dense(spec.shape)})


class _Binary(Op):
    """out = a (op) b for float32 tensors of one shape; `name` is the template's OP."""

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        a, b = inputs["a"], inputs["b"]
        require_dense_f32(self.name, "a", a)
        require_dense_f32(self.name, "b", b)
        if a.shape != b.shape:
            raise ValueError(f"{self.name}: shapes differ: {a.shape} and {b.shape}")
        return _same_shape_plan(self.name, device, a, {"t_out": "out", "t_a": "a", "t_b": "b"})


@register
class Add(_Binary):
    """out = a + b (same shape; the residual add of a decoder layer)."""

    name = "add"
    reference = staticmethod(add_reference)


@register
class Mul(_Binary):
    """out = a * b (same shape; a gate applied to a value)."""

    name = "mul"
    reference = staticmethod(mul_reference)


@register
class Silu(Op):
    """out = silu(x) = x / (1 + exp(-x)), any shape."""

    name = "silu"
    reference = staticmethod(silu_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        require_dense_f32(self.name, "x", inputs["x"])
        return _same_shape_plan(self.name, device, inputs["x"], {"t_out": "out", "t_a": "x"})


@register
class SiluMul(Op):
    """out[..., j] = silu(x[..., j]) * x[..., n + j] for x = [..., 2n] (gate then up)."""

    name = "silu_mul"
    reference = staticmethod(silu_mul_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        require_dense_f32(self.name, "x", x)
        if not x.shape or x.shape[-1] % 2:
            raise ValueError(f"silu_mul: the last axis holds gate then up and must be even, got {x.shape}")
        n = x.shape[-1] // 2
        d = elementwise_dispatch("silu_mul", device, x.rows, n, 2 * n, n,
                                 {"t_out": "out", "t_a": "x"}, step=1)
        return Plan([d], {"out": TensorSpec.dense(x.shape[:-1] + (n,))})


def fused_parts(w: Any) -> tuple[Any, tuple[int, ...] | None, str | None]:
    """(the weight the product runs on, parts, epilogue) of a linear's weight: a
    vkq.FusedWeight's pieces, or (w, None, None) for a plain weight."""
    parts, epilogue = getattr(w, "parts", None), getattr(w, "epilogue", None)
    return (w.weight if parts else w), parts, epilogue


def fused_bias(bias: np.ndarray | None, epilogue: str | None) -> np.ndarray | None:
    """A fused weight's float32 bias in the product's channel order: silu_mul's [b_gate, b_up]
    interleaved as its rows are (gate j, then up j)."""
    if bias is None or epilogue != "silu_mul":
        return bias
    return np.ascontiguousarray(bias.reshape(2, -1).T.reshape(-1))


def fused_finish(parts: tuple[int, ...] | None, epilogue: str | None) -> Any:
    """What a linear call returns from its outputs: "y", or the tuple of parts "y0", "y1", ..."""
    if parts and epilogue is None:
        return lambda out: tuple(out[f"y{i}"] for i in range(len(parts)))
    return output_y


@dataclasses.dataclass
class FusedOutputs:
    """How a linear op's product becomes its outputs (`fused_outputs`)."""

    product: str                        # the role the matrix product writes
    dispatches: list[PlannedDispatch]   # run after the product
    outputs: dict[str, TensorSpec]
    scratch: dict[str, int]
    views: dict[str, tuple[str, int]]
    #: what the product's kernel does itself: 0 nothing, 1 adds "residual", 2 silu_mul of
    #: alternating gate/up channels (the q4gsw GEMV's `epilogue` push constant)
    in_kernel: int = 0


def fused_outputs(device: Any, lead: tuple[int, ...], n: int, parts: tuple[int, ...] | None,
                  epilogue: str | None, residual: TensorSpec | None = None,
                  kernel_epilogues: bool = False) -> FusedOutputs:
    """The output stage of a linear op over N = sum(parts) channels with leading dims `lead`.
    `kernel_epilogues`: the product's kernel can add a residual and apply silu_mul itself.

    - plain: the product is the output "y" [*lead, N]; with `residual`, "y" = product +
      residual (in the kernel, or an add dispatch over a scratch product);
    - `parts` (q, k and v fused): outputs "y0", "y1", ... [*lead, n_i]. With one row and
      part offsets the device can bind, they are slices of one buffer (no extra work);
      otherwise copy_cols dispatches take each part's columns out of a scratch product;
    - `epilogue="silu_mul"` (gate and up fused: two equal parts whose rows alternate, gate j
      then up j): "y" = silu(gate) * up [*lead, N/2], in the kernel or a silu_mul dispatch.
    """
    m = math.prod(lead)
    if epilogue not in (None, "silu_mul"):
        raise ValueError(f"epilogue must be None or 'silu_mul', got {epilogue!r}")
    if residual is not None:
        if parts or epilogue:
            raise ValueError("residual= applies to a plain linear, not to fused parts or epilogues")
        require_dense_f32("linear", "residual", residual)
        if residual.shape != lead + (n,):
            raise ValueError(f"residual must have shape {lead + (n,)}, got {residual.shape}")
        y = {"y": TensorSpec.dense(lead + (n,))}
        if kernel_epilogues:
            return FusedOutputs("y", [], y, {}, {}, in_kernel=1)
        add = elementwise_dispatch("add", device, m, n, n, 0,
                                   {"t_out": "y", "t_a": "scratch.product", "t_b": "residual"})
        return FusedOutputs("scratch.product", [add], y, {"scratch.product": 4 * m * n}, {})
    if epilogue == "silu_mul":
        if not parts or len(parts) != 2 or parts[0] != parts[1]:
            raise ValueError(f"epilogue='silu_mul' needs two parts of equal size (gate, up), got {parts}")
        half = parts[0]
        y = {"y": TensorSpec.dense(lead + (half,))}
        if kernel_epilogues:
            return FusedOutputs("y", [], y, {}, {}, in_kernel=2)
        d = elementwise_dispatch("silu_mul", device, m, half, n, 1,
                                 {"t_out": "y", "t_a": "scratch.product"}, step=2)
        return FusedOutputs("scratch.product", [d], y, {"scratch.product": 4 * m * n}, {})
    if not parts:
        return FusedOutputs("y", [], {"y": TensorSpec.dense(lead + (n,))}, {}, {})
    starts = np.concatenate([[0], np.cumsum(parts)[:-1]]).astype(int)
    outputs = {f"y{i}": TensorSpec.dense(lead + (p,)) for i, p in enumerate(parts)}
    if m == 1 and all((4 * s) % RANGE_ALIGN == 0 for s in starts):
        outputs["y"] = TensorSpec.dense(lead + (n,))
        views = {f"y{i}": ("y", 4 * int(s)) for i, s in enumerate(starts)}
        return FusedOutputs("y", [], outputs, {}, views)
    copies = [elementwise_dispatch("copy_cols", device, m, p, n, int(s),
                                   {"t_out": f"y{i}", "t_a": "scratch.product"})
              for i, (p, s) in enumerate(zip(parts, starts))]
    return FusedOutputs("scratch.product", copies, outputs, {"scratch.product": 4 * m * n}, {})
