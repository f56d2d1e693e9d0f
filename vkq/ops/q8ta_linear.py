"""q8ta linear (docs/design.md §3): int8 activations x int8 per-channel weights -> int8,
requantized.

    w = vkq.quantize_weight(W, bits=8)                     # or vkq.QuantizedWeight(q=, scales=, bits=8)
    yq = vkq.linear(xq, w, bias, input_scale=s_x, input_zero_point=zp_x,
                    output_scale=s_out, output_zero_point=zp_out, activation="relu")

Kernels (routing is observable with `vkq.trace()` and forced with `kernel=`):

- ``kernel="gemv"`` -> ``q8ta_linear_gemv_*``: cooperative GEMV, activations/outputs in the
  4W layout ("int8_4w"). Picked by ``"auto"`` for M == 1; accepts any M (a row per
  workgroup row).
- ``kernel="gemm"`` -> ``q8ta_linear_*``: register-tiled GEMM on integer dot products,
  activations/outputs in 4H4W ("int8_4h4w"); accepts any M.
- ``kernel="coopmat"`` -> ``q8ta_linear_coopmat_*``: the GEMM on int8 tensor cores (the device
  lists the int8 16x16x32 cooperative-matrix shape and has 32-wide subgroups; ValueError
  elsewhere): same layouts, identical integer results.
- ``"auto"``: the GEMV for M == 1, else the GEMM on tensor cores where the device has them,
  else the register-tiled one.

Each has an integer-dot variant (``*_idot*``, OpSDot) used where the device has
``shaderIntegerDotProduct`` and a bit-identical int32 fallback (``*_fallback*``). The GEMV
reduces with subgroup arithmetic where available (``*_subgroup``), else a shared-memory tree.

Weights are packed once per device into the "int8_weight_4n4k" layout (+ wsum) and cached on
the `QuantizedWeight` (`w.release()` frees them); both kernels read that one copy. The
per-channel epilogue constants (derived from the scales and the bias) are cached with it for
the last few (input_scale, output_scale, bias) combinations.

Keeping activations on the device between layers: pass a `vkq.DeviceTensor` instead of a
numpy array and you get a `DeviceTensor` back, in the layout of the kernel that ran, ready to
be the next layer's input (no host round trip, no repacking)::

    xd = vkq.to_device(xq, layout="int8_4w")       # M == 1 (decode): GEMV chain
    # xd = vkq.to_device(xq, layout="int8_4h4w")   # M > 1 (prefill): GEMM chain
    hd = vkq.linear(xd, w1, input_scale=s0, input_zero_point=z0,
                    output_scale=s1, output_zero_point=z1, activation="relu")
    yd = vkq.linear(hd, w2, input_scale=s1, input_zero_point=z1,
                    output_scale=s2, output_zero_point=z2)
    y = yd.numpy()                                 # int8 [M, N2]: download + unpack

A device tensor's layout decides the kernel under ``kernel="auto"`` ("int8_4w" -> GEMV,
"int8_4h4w" -> GEMM); forcing the other kernel raises a `LayoutError` saying how to repack.
Leading batch dimensions are folded into rows by `vkq.to_device`, so device results are 2-D.

Constraints (checked, with errors naming them): K < 131072 (int8 x int8 sums then fit int32
without saturation, docs/design.md §1; any K otherwise: the packers pad K to a multiple of 4 with zeros,
which add nothing to the integer dot and leave wsum unchanged); finite activation/output
scales > 0 (weight scales: any finite value); zero points in [-128, 127]; bias None or finite
float [N].
"""
from __future__ import annotations

import dataclasses
import numbers
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np

from vkq import layouts
from vkq.layouts import INT8_4H4W, INT8_4W, LayoutError, PackedTensor
from vkq.ops.common import (COOPMAT_BY_KERNEL, INT8_QPARAMS, NO_SHARED_LIMIT, big_tile_pays,
                            bias_vector, ceil_div, check_fits, check_linear_kernel, fits_shared, grid_2d, packed_need,
                            positive_finite, tensor_device, weight_needs, wrong_device_input)
from vkq.ops.contract import (OPS, Call, HostTensor, Op, Plan, PlannedDispatch, TensorSpec, register,
                              register_linear)
from vkq.quantized_weight import INT8_MAX_K, QuantizedWeight
from vkq.reference.q8ta import ACTIVATIONS, q8ta_linear_reference, requant_constants
from vkq.runtime import Buffer, CommandBatch, Device, default_device
from vkq.shaderlib import families, variant_info, variant_name
from vkq.tensor import DeviceTensor

GEMV, GEMM = "gemv", "gemm"
#: layout of a kernel's activations and outputs
LAYOUT = {GEMV: INT8_4W, GEMM: INT8_4H4W}
_WEIGHT_KEY = "q8ta_linear/int8_weight_4n4k"
_EPILOGUE_CACHE = 4


# -- variants and routing -----------------------------------------------------------------------
#: Kernel family (vkq/templates/*.variants.json) of each path.
FAMILY = {GEMV: "q8ta_linear_gemv", GEMM: "q8ta_linear"}
#: The GEMM path's tensor-core family, and the shape it multiplies with (M x N x K, A/B, C).
COOPMAT_FAMILY = "q8ta_linear_coopmat"
COOPMAT_SHAPE = (16, 16, 32, "sint8", "sint32")
#: Coopmat tiles: COOPMAT_BIG_TILE (128x128, 8 subgroups of 64x32, one shared buffer, K
#: steps of 128) where it makes at least COOPMAT_BIG_TILES workgroups, else 64x64 (4 of
#: 32x32). Measured on the H200 (132 SMs); see docs/tuning.md §q8ta coopmat GEMM.
COOPMAT_BIG_TILE, COOPMAT_SMALL_TILE = "t128x128sk4", "t64x64"
COOPMAT_BIG_TILES = 96


def coopmat_tile(m: int, n: int, max_shared: int = NO_SHARED_LIMIT) -> str:
    """The routed coopmat tile for an M x N output (COOPMAT_BIG_TILES) on a device with
    `max_shared` bytes of shared memory."""
    big = variant_name(COOPMAT_FAMILY, TILE=COOPMAT_BIG_TILE)
    return COOPMAT_BIG_TILE if big_tile_pays(big, m, n, COOPMAT_BIG_TILES, max_shared) \
        else COOPMAT_SMALL_TILE


#: GEMM tiles (rows x channels) by batch size: 32x128 up to SMALL_M_TILE_MAX rows, 128x64
#: above. Measured on the H100; see docs/tuning.md §q8ta GEMM tiles.
SMALL_M_TILE_MAX = 256
#: GEMV shapes (lanes per workgroup x 4-channel blocks per workgroup) of the tuned int-dot +
#: subgroup variants (the others have only l128b1): l256b1 for K >= LONG_K, l128b2 for
#: N >= MANY_N. Measured on the H100; see docs/tuning.md §q8ta GEMV shapes.
LONG_K, MANY_N = 8192, 8192


def gemm_tile(m: int) -> str:
    return "t32x128" if m <= SMALL_M_TILE_MAX else "t128x64"


def gemv_shape(n: int, k: int) -> str:
    if k >= LONG_K:
        return "l256b1"
    return "l128b2" if n >= MANY_N else "l128b1"


def int8_tensor_cores(caps: Any) -> bool:
    """Whether a device with `caps` multiplies int8 on tensor cores as the int8 coopmat GEMMs
    (this op's, qta8a's) need: it lists the int8 shape, has 32-wide subgroups (the kernels
    tile by subgroup) and int8."""
    return bool(getattr(caps, "cooperative_matrix", ()) and caps.has_coopmat(*COOPMAT_SHAPE)
                and caps.subgroup_size == 32 and caps.shader_int8)


def coopmat_capable(caps: Any) -> bool:
    """Whether the GEMM path runs on int8 tensor cores on a device with `caps`: it has them
    (int8_tensor_cores) and the shared memory of the small tile."""
    return int8_tensor_cores(caps) and fits_shared(
        variant_name(COOPMAT_FAMILY, TILE=COOPMAT_SMALL_TILE), caps.max_shared_memory)


def pick_variant(path: str, caps: Any, m: int = 1, n: int = 0, k: int = 0, *,
                 int_dot: bool | None = None, subgroup: bool | None = None,
                 coopmat: bool | None = None) -> str:
    """Variant for `path` ("gemv" | "gemm") on an [m, k] x [n, k]^T problem on a device
    with `caps`; `int_dot` / `subgroup` / `coopmat` override the capability-based choice
    (tests)."""
    dot = bool(caps.integer_dot_product if int_dot is None else int_dot)
    if path == GEMM:
        if coopmat_capable(caps) if coopmat is None else coopmat:
            return variant_name(COOPMAT_FAMILY, TILE=coopmat_tile(m, n, caps.max_shared_memory))
        return variant_name(FAMILY[GEMM], INT_DOT=dot, TILE=gemm_tile(m))
    sg = bool(caps.subgroup_arithmetic if subgroup is None else subgroup)
    shape = gemv_shape(n, k) if dot and sg else "l128b1"
    return variant_name(FAMILY[GEMV], INT_DOT=dot, SUBGROUP=sg, SHAPE=shape)


def path_variants(path: str) -> set[str]:
    """Every declared variant implementing `path`."""
    fams = [FAMILY[path]] + ([COOPMAT_FAMILY] if path == GEMM else [])
    return {v.name for f in fams for v in families()[f].variants}


def route(kernel: str, m: int, x_layout: str | None = None) -> str:
    """"gemv" or "gemm" for a request (`x_layout`: the layout of a device-resident input);
    kernel="coopmat" is the GEMM path."""
    asked = GEMM if check_linear_kernel(kernel) == "coopmat" else kernel  # the path kernel= asks for, or "auto"
    if x_layout is not None:
        path = GEMV if x_layout == INT8_4W else GEMM
        if asked not in ("auto", path):
            need = LAYOUT[asked]
            raise LayoutError(f"kernel={kernel!r} needs its input in layout {need!r}, the device "
                              f"tensor is in {x_layout!r}; "
                              f"{layouts.REPACK_HINTS.get(need, '')} and vkq.to_device(..., "
                              f"layout={need!r})")
        return path
    if asked == "auto":
        return GEMV if m == 1 else GEMM
    return asked


def describe_variants(caps: Any) -> dict[str, str]:
    out = {"q8ta_linear (M == 1)": pick_variant(GEMV, caps, 1, 4096, 4096),
           f"q8ta_linear (M == 1, K >= {LONG_K})": pick_variant(GEMV, caps, 1, 4096, LONG_K),
           f"q8ta_linear (M == 1, N >= {MANY_N})": pick_variant(GEMV, caps, 1, MANY_N, 4096)}
    if coopmat_capable(caps):
        for m in (128, 512):
            out[f"q8ta_linear on tensor cores (M={m}, N=4096)"] = pick_variant(GEMM, caps, m, 4096)
    else:
        out[f"q8ta_linear (1 < M <= {SMALL_M_TILE_MAX})"] = pick_variant(GEMM, caps, 2)
        out[f"q8ta_linear (M > {SMALL_M_TILE_MAX})"] = pick_variant(GEMM, caps, SMALL_M_TILE_MAX + 1)
    return out


# -- input checks ---------------------------------------------------------------------------------
def _zero_point(name: str, v: Any) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if not -128 <= int(v) <= 127:
        raise ValueError(f"{name} must be in [-128, 127] (int8), got {int(v)}")
    return int(v)


def check_k(k: int) -> None:
    if k >= INT8_MAX_K:
        raise ValueError(f"K = {k} is too large: int8 x int8 sums may overflow int32 for "
                         f"K >= {INT8_MAX_K}; split the layer along K")


@dataclasses.dataclass(frozen=True)
class QParams:
    """Validated quantization parameters of one call."""

    s_x: float
    zp_x: int
    s_out: float
    zp_out: int
    relu: bool

    @classmethod
    def check(cls, input_scale: Any, input_zero_point: Any, output_scale: Any,
              output_zero_point: Any, activation: Any) -> "QParams":
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        return cls(positive_finite("input_scale", input_scale),
                   _zero_point("input_zero_point", input_zero_point),
                   positive_finite("output_scale", output_scale),
                   _zero_point("output_zero_point", output_zero_point), activation == "relu")


def _check_weight(w: Any) -> tuple[int, int]:
    if not isinstance(w, QuantizedWeight):
        raise TypeError(f"w must be a vkq.QuantizedWeight, got {type(w).__name__}")
    if w.bits != 8:
        raise ValueError(f"q8ta_linear needs int8 weights (bits=8), got bits={w.bits}")
    n, k = w.shape
    check_k(k)
    return n, k


def _check_x(x: Any, k: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy int8 array or a vkq.DeviceTensor, got {type(x).__name__}")
    if x.dtype != np.int8:
        raise TypeError(f"x must be an int8 array (quantized activations), got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension [..., K]")
    if x.shape[-1] != k:
        raise ValueError(f"x has K = {x.shape[-1]} (last axis) but the weights have K = {k}")
    check_k(x.shape[-1])
    return x


def _check_device_x(x: DeviceTensor, k: int, device: Device) -> int:
    if x.format not in (INT8_4W, INT8_4H4W):
        raise LayoutError(wrong_device_input(
            x, "int8 linear takes int8 activations in layout 'int8_4w' (M == 1) or 'int8_4h4w'",
            "vkq.to_device(xq, layout='int8_4w' or 'int8_4h4w') of x quantized with "
            "(input_scale, input_zero_point), e.g. by vkq.reference.quantize_activation_int8"))
    if x.device is not device:
        raise ValueError("x lives on another vkq Device than the one this call runs on")
    if len(x.shape) != 2 or x.shape[1] != k:
        raise ValueError(f"x has shape {x.shape}; expected [M, {k}] to match the weights' K")
    check_k(x.shape[1])
    return x.shape[0]


# -- device copies --------------------------------------------------------------------------------
class PackedWeight:
    """A QuantizedWeight's device copy: int8_weight_4n4k blocks + wsum, and a small cache of
    per-channel epilogue constants (float32 [N4, 2, 4]: mult block, offs block)."""

    def __init__(self, device: Device, w: QuantizedWeight):
        check_fits(device.caps, weight_needs(8, w.shape))
        packed = layouts.pack_int8_weight(np.asarray(w.q))
        self.n, self.k = w.shape
        self.n4, self.k4 = ceil_div(self.n, 4), ceil_div(self.k, 4)
        self.scales = np.asarray(w.scales, np.float32)
        self.device = device
        self.data = device.upload(packed.arrays["data"])
        self.wsum = device.upload(packed.arrays["wsum"])
        self.weight_bytes = packed.nbytes
        self._epilogues: OrderedDict[Any, Buffer] = OrderedDict()

    def epilogue(self, qp: QParams, bias: np.ndarray | None) -> Buffer:
        """The epilogue-constant buffer for these scales and bias (built once, LRU-cached)."""
        key = (qp.s_x, qp.s_out, None if bias is None else bias.tobytes())
        buf = self._epilogues.get(key)
        if buf is not None and not buf.closed:
            self._epilogues.move_to_end(key)
            return buf
        buf = self.device.upload(epilogue_constants(self.scales, qp, bias))
        self._epilogues[key] = buf
        while len(self._epilogues) > _EPILOGUE_CACHE:
            self._epilogues.popitem(last=False)[1].close()
        return buf

    @property
    def closed(self) -> bool:
        return self.data.closed or self.wsum.closed

    def buffers(self) -> dict[str, Buffer]:
        """Role suffix -> buffer, as plans bind them ("weight.data", "weight.wsum")."""
        return {"data": self.data, "wsum": self.wsum}

    def close(self) -> None:
        for b in (self.data, self.wsum, *self._epilogues.values()):
            b.close()
        self._epilogues.clear()


def epilogue_constants(scales: np.ndarray, qp: QParams, bias: np.ndarray | None) -> np.ndarray:
    """float32 [N4, 2, 4]: per 4-channel block, mult = f32(s_x*s_w/s_out) then
    offs = f32(bias/s_out), padding channels 0 (vkq/reference/q8ta.py documents the math)."""
    mult, offs = requant_constants(qp.s_x, scales, qp.s_out, bias)
    if not (np.all(np.isfinite(mult)) and np.all(np.isfinite(offs))):
        raise ValueError("input_scale * weight scale / output_scale (or bias / output_scale) "
                         "overflows float32: the scales are out of any usable range")
    n = len(mult)
    n4 = ceil_div(n, 4)
    out = np.zeros((2, 4 * n4), np.float32)
    out[0, :n], out[1, :n] = mult, offs
    return np.ascontiguousarray(out.reshape(2, n4, 4).transpose(1, 0, 2))


def prepack(w: QuantizedWeight, device: Device) -> PackedWeight:
    """The weight's device copy on `device`, built on first use and cached on `w`."""
    return w.prepacked(_WEIGHT_KEY, device, lambda: PackedWeight(device, w))


# -- plan and record ------------------------------------------------------------------------------
def q8ta_dispatch(device: Device, variant: str, m: int, n: int, k: int, zp_x: int, zp_out: int,
                  relu: bool, acc_out: bool = False) -> PlannedDispatch:
    """The one dispatch of an [M, K] x [N, K]^T call with `variant` (its path's grid), bound by
    role: "x", "y", "weight.data", "weight.wsum", "epilogue". `acc_out=True` (tests) writes the
    raw int32 accumulators as int32 [M, 4*N4] instead of int8 results."""
    info = variant_info(variant)
    n4, k4 = ceil_div(n, 4), ceil_div(k, 4)
    push = {"m": m, "n": n, "n4": n4, "k4": k4, "zp_x": zp_x, "zp_out": zp_out, "relu": int(relu)}
    max_x, max_y, _ = device.caps.max_workgroup_count
    p = info.params
    if info.template == families()[FAMILY[GEMV]].template:  # the GEMV's grid
        grid = (min(ceil_div(n4, p["NB"]), max_x), min(m, max_y), 1)
    elif info.template == families()[COOPMAT_FAMILY].template:  # one workgroup per tile
        grid = (ceil_div(n, p["BN"]), ceil_div(m, p["BM"]), 1)
        push["m4"] = ceil_div(m, 4)
        if grid[0] > max_x or grid[1] > max_y:
            raise ValueError(f"[{m}, {n}] needs {grid[:2]} coopmat tiles, over this device's "
                             f"workgroup counts {(max_x, max_y)}")
    else:
        tiles = ceil_div(ceil_div(m, 4), p["WG_Y"] * p["TM4"]) * ceil_div(n4, p["WG_X"] * p["TN4"])
        gx, gy, _ = grid_2d(tiles, max_x)
        grid = (gx, min(gy, max_y), 1)  # the shader loops over tiles past the grid
        push["m4"] = ceil_div(m, 4)
    return PlannedDispatch(variant, grid, {"t_out": "y", "t_x": "x", "t_w": "weight.data",
                                           "t_wsum": "weight.wsum", "t_requant": "epilogue"},
                           push, {"ACC_OUT": 1} if acc_out else {})


def record(batch: CommandBatch, variant: str, *, x: Buffer, out: Buffer, weight: PackedWeight,
           weight_data: Buffer | None = None, epilogue: Buffer, m: int, qp: QParams,
           acc_out: bool = False) -> None:
    """Record one q8ta dispatch into a batch (the low-level entry point: tests and the
    benchmark). `x`/`out` hold the activations/outputs in the variant's layout (4W for gemv
    variants, 4H4W for the GEMM); `weight_data` substitutes another buffer holding the same
    packed blocks (benchmarks rotate copies)."""
    d = q8ta_dispatch(batch.device, variant, m, weight.n, weight.k, qp.zp_x, qp.zp_out, qp.relu, acc_out)
    buffers = {"x": x, "y": out, "weight.data": weight_data or weight.data, "weight.wsum": weight.wsum,
               "epilogue": epilogue}
    OPS[Q8taLinear.name].record(batch, buffers, Plan([d], {}))


def output_spec(path: str, m: int, n: int) -> tuple[int, ...]:
    """Shape of the int32 `data` array of an [M, N] output in the path's layout."""
    return (m, ceil_div(n, 4)) if path == GEMV else (ceil_div(m, 4), ceil_div(n, 4), 4)


def pack_x(path: str, x2: np.ndarray) -> PackedTensor:
    """int8 activations [M, K] packed in the layout of the path's kernel."""
    return layouts.pack_int8_4w(x2) if path == GEMV else layouts.pack_int8_4h4w(x2)


def _unpack_y(path: str, m: int, n: int, lead: tuple[int, ...]) -> Callable[[dict[str, Any]], np.ndarray]:
    def finish(out: dict[str, Any]) -> np.ndarray:
        data = out["y"]
        y = layouts.UNPACKERS[LAYOUT[path]](PackedTensor(LAYOUT[path], 1, (m, n), {"data": data}))
        return y.reshape(*lead, n)
    return finish


@register
class Q8taLinear(Op):
    """int8 ``[M, N]`` = requantized ``xq [M, K] . w^T`` (docs/design.md §3; module docstring).

    Input "x": int8 [M, K] in "int8_4w" (GEMV) or "int8_4h4w" (GEMM). Constant "epilogue":
    the per-channel float32 constants (epilogue_constants). Attributes: "kernel", "variant"
    (forces a variant of the path), "zp_x", "zp_out", "relu".
    """

    name = "q8ta_linear"
    reference = staticmethod(q8ta_linear_reference)
    constant_roles = ("epilogue",)

    def prepack(self, weight: Any, device: Device) -> PackedWeight:
        _check_weight(weight)
        return prepack(weight, device)

    def linear_call(self, x: Any, w: Any, bias: Any, options: Mapping[str, Any]) -> Call:
        if hasattr(w, "parts") or options.get("residual") is not None or options.get("rms_norm") is not None:
            raise ValueError("int8 linear layers take neither fused weights nor residual= nor rms_norm= yet")
        missing = [q for q in INT8_QPARAMS if options.get(q) is None]
        if missing:
            raise TypeError(f"int8 linear needs {', '.join(missing)}")
        n, k = _check_weight(w)
        qp = QParams.check(*(options[q] for q in INT8_QPARAMS), options.get("activation", "none"))
        b = bias_vector(bias, n)
        kernel, variant = options.get("kernel", "auto"), options.get("variant")
        device = options.get("device") or tensor_device(x) or default_device()
        check_fits(device.caps, weight_needs(8, w.shape))  # before any packing
        attrs = {"kernel": kernel, "variant": variant, "zp_x": qp.zp_x, "zp_out": qp.zp_out,
                 "relu": qp.relu}
        constants = {"epilogue": epilogue_constants(np.asarray(w.scales, np.float32), qp, b)}
        if hasattr(x, "spec") and not isinstance(x, np.ndarray):  # DeviceTensor or graph value
            if isinstance(x, DeviceTensor):
                _check_device_x(x, k, device)
            m = x.spec.rows
            path = route(kernel, m, x.spec.layout)
            check_fits(device.caps, [packed_need("int8 output y", LAYOUT[path], (m, n))])
            return Call({"x": x}, attrs, w, constants)
        x = _check_x(x, k)
        lead = x.shape[:-1]
        m = int(np.prod(lead, dtype=np.int64))
        path = route(kernel, m)
        _check_variant(variant, path)
        if m == 0:
            return Call({}, attrs, immediate=np.empty((*lead, n), np.int8))
        check_fits(device.caps, [packed_need("int8 output y", LAYOUT[path], (m, n)),
                                 packed_need("int8 activations x", LAYOUT[path], (m, k))])
        data = pack_x(path, x.reshape(m, k)).arrays["data"]
        xi = HostTensor(TensorSpec((m, k), np.dtype(np.int8), LAYOUT[path], data.shape, data.dtype), data)
        return Call({"x": xi}, attrs, w, constants, _unpack_y(path, m, n, lead))

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        if x.layout not in (INT8_4W, INT8_4H4W) or x.dtype != np.int8 or len(x.shape) != 2:
            raise LayoutError(wrong_device_input(
                x, "int8 linear takes int8 activations [M, K] in layout 'int8_4w' (M == 1) or "
                   "'int8_4h4w'", "int8 activations (vkq.to_device(xq, layout='int8_4w'))"))
        m, k = x.shape
        if k != weight.k:
            raise ValueError(f"x has shape {x.shape}; expected [M, {weight.k}] to match the weights' K")
        path = route(attrs.get("kernel", "auto"), m, x.layout)
        variant = attrs.get("variant")
        _check_variant(variant, path)
        coopmat = COOPMAT_BY_KERNEL[attrs.get("kernel", "auto")]
        if coopmat and not coopmat_capable(device.caps):
            raise ValueError("kernel='coopmat': the device has no int8 16x16x32 cooperative "
                             "matrix with 32-wide subgroups and the shared memory its tiles need")
        variant = variant or pick_variant(path, device.caps, m, weight.n, weight.k, coopmat=coopmat)
        d = q8ta_dispatch(device, variant, m, weight.n, weight.k, attrs["zp_x"], attrs["zp_out"],
                          attrs["relu"])
        y = TensorSpec((m, weight.n), np.dtype(np.int8), LAYOUT[path], output_spec(path, m, weight.n),
                       np.dtype(np.int32))
        return Plan([d] if m else [], {"y": y})


def _check_variant(variant: str | None, path: str) -> None:
    if variant is not None and variant not in path_variants(path):
        raise ValueError(f"variant {variant!r} does not implement the {path} path; "
                         f"choose from {sorted(path_variants(path))}")


register_linear("int8", "int8", Q8taLinear.name)
