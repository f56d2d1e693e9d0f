"""Graph passes: rewrites of a captured graph's nodes, run when the graph is built.

A pass is a function `pass_(graph) -> int` (how many rewrites it made) that reads
`graph.nodes` and changes them only through `graph.replace`, appending one line per rewrite
to `graph.pass_log`. `vkq.graph(passes=...)` picks the passes; `DEFAULT_PASSES` run unless
told otherwise.

`fuse_quantized_linear` turns dynamic int8 activation quantization in front of an int4
linear into the fused int8 x int4 linear:

    quantize_per_token(x) -> (xq, scales, zero_points)
    dequantize_per_token(xq, scales, zero_points) -> xd         =>   qta8a_qga4w_linear(x, w4)
    q4gsw_linear(xd, w4 [, bias]) -> y

The unfused nodes compute `(rint(x / s + zp) - zp) * s` and multiply that by the float
weights (PyTorch's fake-quantized math); the fused op quantizes x the same way and
multiplies the int8 values by the int4 weights in integers (docs/design.md §3, qta8a_qga4w),
so only the float epilogue's rounding differs. It does not fire when

- the dequantized activations are used by anything else (another op, a graph output): they
  would still have to be computed;
- the dequantized values are not the per-token asymmetric int8 quantization of one float
  tensor: int8 values or parameters that come from elsewhere (graph inputs, other ops,
  another tensor's quantize);
- the linear is not an int4 group-wise one, runs a kernel forced by name (the call asked for
  that q4gsw kernel), or folds an rms_norm into itself (`rms_norm=`): that norm is of the
  dequantized values, while the fused op's rms_norm= normalizes before quantizing.

Fused weights (`vkq.fuse_linear`: q/k/v parts, gate/up with silu_mul) and a residual fuse
too: the fused op runs the same output stage after its int8 kernels (the same attributes and
outputs, vkq.ops.elementwise.fused_outputs).

The quantize node stays when its outputs have other users. Where the fused op's own routing
would skip quantizing (`kernel="auto"` at M = 1 sends float activations straight into the
q4gsw GEMV), the pass forces its int8 GEMV: the graph asked for quantized activations.
"""
from __future__ import annotations

from typing import Any

from vkq.ops import contract, qta8a_qga4w_linear

QUANTIZE = "quantize_per_token"
DEQUANTIZE = "dequantize_per_token"
WEIGHT_ONLY_LINEAR = "q4gsw_linear"
FUSED_LINEAR = "qta8a_qga4w_linear"
#: the outputs of QUANTIZE that DEQUANTIZE reads, by the same role names
QPARAM_ROLES = ("xq", "scales", "zero_points")


def fuse_quantized_linear(graph: Any) -> int:
    """Fuse every quantize_per_token -> dequantize_per_token -> int4 linear chain of `graph`
    (a vkq.Graph being captured) into one qta8a_qga4w_linear node (module docstring: when it
    does not). Returns the number of chains fused."""
    fused = 0
    for linear in graph.nodes:
        chain = _match(graph, linear)
        if chain is None:
            continue
        quantize, dequantize = chain
        old = [dequantize, linear]
        if all(u is dequantize for v in quantize.outputs.values() for u, _ in graph.users(v)) \
                and not any(graph.is_output(v) for v in quantize.outputs.values()):
            old.insert(0, quantize)
        before = " ".join(n.label for n in old)
        x = quantize.inputs["x"]
        # Both int4 linears build their calls alike (q4gsw_linear.int4_linear_call): the same
        # attributes, constants and outputs serve the fused op, its kernel choice aside.
        call = contract.Call(dict(linear.inputs, x=x),  # x: the float activations; a residual as is
                             dict(linear.attrs, kernel=_quantizing_kernel(x.spec.rows)),
                             linear.weight, dict(linear.constants))
        node = graph.replace(old, contract.get(FUSED_LINEAR), call, keep=dict(linear.outputs))
        graph.pass_log.append(f"fuse_quantized_linear: {before} -> {node.label}")
        fused += 1
    return fused


def _match(graph: Any, linear: Any) -> tuple[Any, Any] | None:
    """(quantize node, dequantize node) feeding `linear` as the pass needs, or None."""
    if linear.op.name != WEIGHT_ONLY_LINEAR or not _fusable_int4(linear):
        return None
    xd = linear.inputs["x"]
    dequantize = graph.producer(xd)
    if dequantize is None or dequantize.op.name != DEQUANTIZE:
        return None
    if graph.is_output(xd) or [u for u, _ in graph.users(xd)] != [linear]:
        return None
    quantize = graph.producer(dequantize.inputs["xq"])
    if quantize is None or quantize.op.name != QUANTIZE:
        return None
    if any(dequantize.inputs[r] is not quantize.outputs[r] for r in QPARAM_ROLES):
        return None
    return quantize, dequantize


def _quantizing_kernel(rows: int) -> str:
    """The fused op's kernel choice for `rows`: its own routing, except that where that
    routing takes the weight-only shortcut (float activations straight into the q4gsw GEMV,
    no quantization) the int8 GEMV is forced: the graph asked for quantized activations, and
    the fused result must stay the unfused one's up to the float epilogue."""
    return "gemv" if qta8a_qga4w_linear.route(rows, "auto") == qta8a_qga4w_linear.WEIGHT_ONLY \
        else "auto"


#: the attributes of an int4 linear call the fused op takes as they are (int4_linear_call)
FUSABLE_ATTRS = frozenset({"kernel", "has_bias", "parts", "epilogue", "norm_eps"})


def _fusable_int4(linear: Any) -> bool:
    """An int4 group-wise linear the fused op can stand in for: no kernel (or other choice)
    forced by name, no rms_norm of its input (module docstring)."""
    attrs = linear.attrs
    return (attrs.get("norm_eps") is None and attrs.get("kernel", "auto") == "auto"
            and set(attrs) <= FUSABLE_ATTRS
            and getattr(linear.weight, "group_size", None) is not None)


#: the passes every graph runs unless `vkq.graph(passes=...)` says otherwise
DEFAULT_PASSES = (fuse_quantized_linear,)
