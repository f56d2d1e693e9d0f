"""qta8a_qga4w linear (docs/design.md §3): float activations quantized per token to int8 on the
GPU, times int4 group-wise weights, float32 output.

    w = vkq.quantize_weight(W, bits=4, group_size=32)       # the same weight as vkq.linear(x, w)
    y = vkq.linear(x, w, act_quant="int8")                   # quantize pass + fused linear

The weight is the q4gsw op's device copy (Q4gswWeight: nibbles with the +8 offset, scales and
zeros [N, n_groups], fp16 or float32): quantize once, run either path. The weight sums the
integer corrections need come from the nibbles inside the kernels, so no second copy exists.

One call, one submit, two dispatches (plus, where asked for, an rms_norm dispatch before and
the fused weights' residual add / silu_mul / part copies after, vkq.ops.elementwise):

1. the quantize pass (quantize_per_token.comp.j2, MODE "octets"): one workgroup per row writes
   the row's int8 values in the "int8_token_octets" layout, their sums per 8 k and the row's
   scale and zero point (scratch), with exactly the math of vkq.quantize_per_token;
2. the fused linear: `qta8a_qga4w_linear_gemv.comp.j2` (rows of x per workgroup; M up to
   GEMV_MAX_ROWS) or the register-tiled `qta8a_qga4w_linear.comp.j2` (larger M). Integer dot
   products (or the bit-identical int32 fallback where the device has no
   shaderIntegerDotProduct) form the exact int32 sums, the float epilogue scales them. Where
   the device has int8 tensor cores and the group size is a multiple of 32, the GEMM is
   `qta8a_qga4w_coopmat.comp.j2` instead: the same exact group sums from int8 MMAs.

Routing (`kernel="auto"`) also weighs the weight-only q4gsw path (docs/design.md §5): at
M <= WEIGHT_ONLY_MAX_ROWS the float activations go straight into the q4gsw GEMV (no
quantization: more accurate, and without the quantize pass's dependent dispatch), as
measured on the H200 (docs/bench-h200.md, session of 2026-11-30: at M = 1 the int8 path
took 11.9 µs, the q4gsw GEMV 7.1). `kernel="gemv"` / `"gemm"` force the
int8 kernels at any M ("gemm": the integer-dot GEMM), `"coopmat"` the GEMM on tensor cores.
Observable with `vkq.trace()`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vkq import layouts
from vkq.layouts import INT8_TOKEN_OCTETS
from vkq.ops import contract, q4gsw_linear, q8ta_linear
from vkq.ops.common import (COOPMAT_BY_KERNEL, INT8_QPARAMS, NO_SHARED_LIMIT, big_tile_pays,
                            ceil_div, check_linear_kernel, grid_2d, packed_need, require_float_activations,
                            shared_refusal)
from vkq.ops.contract import Call, Op, Plan, PlannedDispatch, TensorSpec, register, register_linear
from vkq.ops.elementwise import fused_outputs, fused_parts
from vkq.ops.rms_norm import NORMED_X, norm_first
from vkq.reference.qta8a_qga4w import qta8a_qga4w_linear_reference
from vkq.shaderlib import variant_info, variant_name

WEIGHT_ONLY, GEMV, GEMM = "weight_only", "gemv", "gemm"

#: M <= this runs the weight-only q4gsw path under kernel="auto". Measured on the H200 at
#: 4096 x 4096, g32 (docs/bench-h200.md, 2026-11-30): quantize + int8 GEMV 11.9 µs against
#: the q4gsw GEMV's 7.1 at M = 1 (the quantize pass alone 4.0); at M = 2 still 11.9 against
#: 8.5, but the weight-only batch GEMV is kept for one row only so that act_quant="int8"
#: quantizes wherever it is not free to skip (from M = 16 the int8 GEMV is faster).
WEIGHT_ONLY_MAX_ROWS = 1
#: M <= this runs the GEMV (rows of x per workgroup), above the GEMM (on tensor cores where
#: coopmat_refusal allows). Not measured yet: the
#: q4gsw op's measured crossing point (24).
GEMV_MAX_ROWS = 24
#: GEMV shape by M (the first whose limit holds): lanes, channels (R) and rows of x (MR)
#: per workgroup. Without subgroup arithmetic, GEMV_FALLBACK_SHAPE (one row per workgroup).
GEMV_SHAPES: tuple[tuple[int, str], ...] = ((1, "l128r8m1"), (2, "l128r4m2"), (1 << 62, "l128r4m4"))
GEMV_FALLBACK_SHAPE = "l128r8m1"
#: GEMM tile (rows x channels) by M. Not measured yet.
GEMM_TILES: tuple[tuple[int, str], ...] = ((64, "32x64"), (256, "64x64"), (1 << 62, "128x64"))
#: The GEMM on int8 tensor cores (qta8a_qga4w_coopmat.comp.j2): devices that run the q8ta
#: coopmat GEMM (the int8 16x16x32 shape, 32-wide subgroups), group sizes that are multiples
#: of 32. Tile: COOPMAT_BIG_TILE where it makes at least COOPMAT_BIG_TILES workgroups, else
#: COOPMAT_SMALL_TILE. Measured on the H200 (132 SMs); see docs/tuning.md §qta8a coopmat GEMM.
COOPMAT_FAMILY = "qta8a_coopmat"
COOPMAT_BIG_TILE, COOPMAT_SMALL_TILE = "128x128sk4", "64x64"
COOPMAT_BIG_TILES = 96

#: The quantize pass's scratch (vkq/layouts/int8_token_octets.py arrays) by role.
SCRATCH = {"data": "scratch.xq", "sums": "scratch.sums", "qparams": "scratch.qparams"}


def group_mode(group_size: int) -> str:
    """"word": one group per 32-k weight word or more (group_size % 32 == 0); "comp": groups
    of 8-k components."""
    return "word" if group_size % 32 == 0 else "comp"


def group_units(group_size: int) -> int:
    """Words ("word") or components ("comp") per group: the kernels' GROUP_UNITS."""
    return group_size // (32 if group_mode(group_size) == "word" else 8)


def route(m: int, kernel: str) -> str:
    """WEIGHT_ONLY, GEMV or GEMM for M rows under the user's `kernel` choice."""
    if check_linear_kernel(kernel) != "auto":
        return GEMM if kernel == "coopmat" else kernel
    if m <= WEIGHT_ONLY_MAX_ROWS:
        return WEIGHT_ONLY
    return GEMV if m <= GEMV_MAX_ROWS else GEMM


def gemv_shape(m: int, subgroup: bool) -> str:
    if not subgroup:
        return GEMV_FALLBACK_SHAPE
    return next(s for max_m, s in GEMV_SHAPES if m <= max_m)


def gemv_variant(w: Any, m: int, caps: Any, int_dot: bool | None = None,
                 subgroup: bool | None = None) -> str:
    """The GEMV variant for M rows of weight `w` (anything with has_zeros, group_size and
    half_params, like Q4gswWeight) on a device with `caps` (`int_dot` / `subgroup` override
    the capabilities: tests)."""
    dot = bool(caps.integer_dot_product if int_dot is None else int_dot)
    sub = bool(caps.subgroup_arithmetic if subgroup is None else subgroup)
    return variant_name("qta8a_gemv", INT_DOT=dot, ASYM=bool(w.has_zeros),
                        GROUP=group_mode(w.group_size), SHAPE=gemv_shape(m, sub), SUBGROUP=sub,
                        P16=bool(w.half_params))


def coopmat_variant(w: Any, tile: str) -> str:
    return variant_name(COOPMAT_FAMILY, ASYM=bool(w.has_zeros), TILE=tile, P16=bool(w.half_params))


def coopmat_tile(w: Any, m: int, n: int, max_shared: int = NO_SHARED_LIMIT) -> str:
    """The routed coopmat tile for an M x N output of weight `w` (COOPMAT_BIG_TILES) on a
    device with `max_shared` bytes of shared memory."""
    big = coopmat_variant(w, COOPMAT_BIG_TILE)
    return COOPMAT_BIG_TILE if big_tile_pays(big, m, n, COOPMAT_BIG_TILES, max_shared) \
        else COOPMAT_SMALL_TILE


def coopmat_refusal(w: Any, caps: Any) -> str | None:
    """None if the GEMM of weight `w` runs on int8 tensor cores on a device with `caps`, else
    why not."""
    if not q8ta_linear.int8_tensor_cores(caps):
        return "the device has no int8 16x16x32 cooperative matrix with 32-wide subgroups"
    if group_mode(w.group_size) != "word":
        return f"group_size {w.group_size} is not a multiple of 32 (the int8 MMA's k)"
    return shared_refusal(coopmat_variant(w, COOPMAT_SMALL_TILE), caps.max_shared_memory)


def gemm_variant(w: Any, m: int, caps: Any, int_dot: bool | None = None,
                 tile: str | None = None, coopmat: bool | None = None, n: int | None = None) -> str:
    """The GEMM variant for M rows of an N-channel weight: on tensor cores where
    coopmat_refusal allows (`coopmat` True insists: ValueError where it cannot run; False
    forbids it), else the integer-dot GEMM; `tile` forces a tile of the chosen family."""
    why = coopmat_refusal(w, caps)
    if coopmat and why is not None:
        raise ValueError(f"kernel='coopmat': {why}")
    if why is None and coopmat is not False:
        tile = tile or coopmat_tile(w, m, w.shape[0] if n is None else n,
                                    getattr(caps, "max_shared_memory", NO_SHARED_LIMIT))
        return coopmat_variant(w, tile)
    dot = bool(caps.integer_dot_product if int_dot is None else int_dot)
    tile = tile or next(t for max_m, t in GEMM_TILES if m <= max_m)
    return variant_name("qta8a_gemm", INT_DOT=dot, ASYM=bool(w.has_zeros),
                        GROUP=group_mode(w.group_size), TILE=tile, P16=bool(w.half_params))


def quantize_variant(caps: Any) -> str:
    """The quantize pass, with subgroup reductions where the device has them."""
    return variant_name("qta8a_quantize", SUBGROUP=bool(caps.subgroup_arithmetic))


def quantize_dispatch(device: Any, m: int, k: int, x: str = "x") -> PlannedDispatch:
    """The quantize pass: `x` [M, K] float32 -> the SCRATCH roles."""
    return PlannedDispatch(quantize_variant(device.caps),
                           grid_2d(m, device.caps.max_workgroup_count[0]),
                           {"t_q": SCRATCH["data"], "t_sums": SCRATCH["sums"],
                            "t_qparams": SCRATCH["qparams"], "t_x": x},
                           {"n_rows": m, "k": k})


def int8_dispatches(device: Any, w: Any, m: int, has_bias: bool, path: str,
                    int_dot: bool | None = None, subgroup: bool | None = None,
                    gemm_tile: str | None = None, out: str = "y", x: str = "x",
                    coopmat: bool | None = None) -> tuple[list[PlannedDispatch], dict[str, int]]:
    """The quantize pass and the GEMV or GEMM for `out[:m*N] = qta8a(x[:m*K], w) (+ bias)`,
    and their scratch (role -> bytes). Roles: `x`, `out`, "bias" (or "dummy"), "weight.*",
    SCRATCH."""
    n, k = w.shape
    caps = device.caps
    max_x, max_y, max_z = caps.max_workgroup_count
    bufs = {"t_out": out, "t_x": SCRATCH["data"], "t_sums": SCRATCH["sums"],
            "t_qparams": SCRATCH["qparams"], "t_weight": "weight.weight",
            "t_scales": "weight.scales", "t_bias": "bias" if has_bias else "dummy"}
    if w.has_zeros:
        bufs["t_zeros"] = "weight.zeros"
    push = {"m": m, "n": n, "k": k, "n_groups": w.n_groups, "has_bias": int(has_bias)}
    spec = {"GROUP_UNITS": group_units(w.group_size)}
    if path == GEMV:
        variant = gemv_variant(w, m, caps, int_dot, subgroup)
        p = variant_info(variant).params
        gx, gy, _ = grid_2d(ceil_div(n, p["R"]), max_x)
        groups = (gx, gy, ceil_div(m, p["MR"]))
        if groups[2] > max_z:
            raise ValueError(f"M = {m} needs {groups[2]} GEMV row blocks, over this device's "
                             f"{max_z}; use kernel='gemm' or 'auto'")
    else:
        variant = gemm_variant(w, m, caps, int_dot, gemm_tile, coopmat, n)
        p = variant_info(variant).params
        bm, bn = (p["BM"], p["BN"]) if "BM" in p else (p["TY"] * p["TM"], p["TX"] * p["TN"])
        groups = (ceil_div(n, bn), ceil_div(m, bm), 1)
        if groups[0] > max_x or groups[1] > max_y:
            raise ValueError(f"an [{m} x {n}] GEMM needs {groups[:2]} workgroups, over this "
                             f"device's {(max_x, max_y)}; pass fewer rows per call")
    sizes = layouts.packed_nbytes(INT8_TOKEN_OCTETS, (m, k))
    scratch = {role: sizes[name] for name, role in SCRATCH.items()}
    return [quantize_dispatch(device, m, k, x), PlannedDispatch(variant, groups, bufs, push, spec)], scratch


def _weight_shape(w: Any) -> tuple[int, int]:
    if isinstance(w, q4gsw_linear.Q4gswWeight):
        return w.shape
    if getattr(w, "bits", None) == 4:
        return w.shape
    raise TypeError(f"act_quant='int8' needs int4 weights (vkq.quantize_weight(W, bits=4, "
                    f"group_size=...) or a Q4gswWeight), got "
                    f"{'bits=%s' % w.bits if hasattr(w, 'bits') else type(w).__name__}")


@register
class Qta8aQga4wLinear(Op):
    """`y = qta8a(x, w) (+ bias) (+ residual)`: x [..., K] float32 quantized per token to int8
    on the GPU, w int4 group-wise [N, K]; y float32 [..., N] (module docstring).

    Input "x" dense float32 [..., K]; optional "residual" [..., N]. Constants: "bias" [N],
    "norm_weight" [K] with attribute "norm_eps" (x is rms_norm'ed first, then quantized).
    Attributes: "kernel" ("auto" | "gemv" | "gemm" | "coopmat", vkq.ops.common.COOPMAT_BY_KERNEL),
    "has_bias", "parts"/"epilogue" for fused weights (vkq.ops.elementwise.fused_outputs: after
    the int8 kernels the residual, silu_mul and part copies are dispatches of their own; the
    weight-only path at M = 1 runs them as the q4gsw GEMV does, in the kernel); tests force
    "int_dot", "subgroup", "gemm_tile" (a tile of the family the kernel choice runs).
    """

    name = "qta8a_qga4w_linear"
    reference = staticmethod(qta8a_qga4w_linear_reference)
    constant_roles = ("bias", "norm_weight")

    def prepack(self, weight: Any, device: Any) -> Any:
        return contract.get(q4gsw_linear.Q4gswLinear.name).prepack(weight, device)

    def linear_call(self, x: Any, w: Any, bias: Any, options: Mapping[str, Any]) -> Call:
        base = fused_parts(w)[0]
        given = [q for q in INT8_QPARAMS if options.get(q) is not None]
        if given:
            raise TypeError(f"act_quant='int8' quantizes float activations itself (per token): "
                            f"{', '.join(given)} must not be given")
        if options.get("activation", "none") != "none":
            raise ValueError("act_quant='int8' linear has no fused activation")
        n, k = _weight_shape(base)

        def scratch_need(spec: TensorSpec) -> list[Any]:  # the quantize pass's output
            return ([packed_need("quantized activations", INT8_TOKEN_OCTETS, (spec.rows, k))]
                    if spec.shape[-1] == k else [])
        return q4gsw_linear.int4_linear_call(x, w, bias, options, (n, k), scratch_need)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        n, k = weight.shape
        require_float_activations(x, k, "act_quant='int8' linear takes float32 activations")
        m = x.rows
        path = route(m, attrs.get("kernel", "auto"))
        if path == WEIGHT_ONLY:  # the q4gsw op's plan: its GEMV folds norm and epilogues in
            weight_only = {a: attrs.get(a) for a in ("has_bias", "parts", "epilogue", "norm_eps")}
            return contract.get(q4gsw_linear.Q4gswLinear.name).plan(inputs, weight_only, weight, device)
        stage = fused_outputs(device, x.shape[:-1], n, attrs.get("parts"), attrs.get("epilogue"),
                              residual=inputs.get("residual"))
        if m == 0:
            return Plan([], stage.outputs, {}, stage.views)
        eps = attrs.get("norm_eps")
        x_role = "x" if eps is None else NORMED_X  # rms_norm first, then quantize that
        dispatches, scratch = int8_dispatches(device, weight, m, bool(attrs.get("has_bias")), path,
                                              attrs.get("int_dot"), attrs.get("subgroup"),
                                              attrs.get("gemm_tile"), out=stage.product, x=x_role,
                                              coopmat=COOPMAT_BY_KERNEL[attrs.get("kernel", "auto")])
        if eps is not None:
            norm_first(device, m, k, eps, dispatches, scratch)
        scratch.update(stage.scratch)
        return Plan(dispatches + stage.dispatches, stage.outputs, scratch, stage.views)


def describe_variants(caps: Any) -> dict[str, str]:
    """What act_quant='int8' runs for a symmetric g32 weight with fp16 parameters (M up to
    WEIGHT_ONLY_MAX_ROWS: the q4gsw GEMV, described there)."""
    w = _Kind(has_zeros=False, group_size=32, half_params=True)
    out = {"qta8a_qga4w quantize pass": quantize_variant(caps)}
    for m in (WEIGHT_ONLY_MAX_ROWS + 1, 3):
        out[f"qta8a_qga4w GEMV (M={m})"] = gemv_variant(w, m, caps)
    for m in (GEMV_MAX_ROWS + 1, 512):
        out[f"qta8a_qga4w GEMM (M={m}, N=4096)"] = gemm_variant(w, m, caps, n=4096)
    return out


@dataclasses.dataclass(frozen=True)
class _Kind:
    """A weight's kind, as the variant pickers read it."""

    has_zeros: bool
    group_size: int
    half_params: bool


register_linear("int4", "dynamic_int8", Qta8aQga4wLinear.name)
