"""q4gsw linear (docs/design.md §3): float activations x int4 group-wise weights -> float32.

    w = vkq.quantize_weight(W, bits=4, group_size=32)        # logical weights
    y = vkq.linear(x, w)                                      # packs + uploads once, then routes
    pw = prepack_q4gsw(pack_int4_weight(q), pack_group_params(s, z, gs, K), device)
    y = linear(x, pw)                                         # already-packed device weights

Routing (docs/design.md §5): M == 1 -> the cooperative GEMV (`q4gsw_linear_gemv.comp.j2`), whose
workgroup shape is picked by (N, K) from measurements (`GEMV_CONFIGS`); M > 1 -> the
register-tiled GEMM (`q4gsw_linear.comp.j2`), which handles every valid shape, except that
small batches (M <= GEMV_MAX_ROWS = 24) run the GEMV too, with 2 or 4 rows of x per workgroup
(`GEMV_BATCH_CONFIGS`): the GEMM's 32-row tiles made M = 2 cost as much as M = 32 (8-10x
the GEMV's time on the H100). The GEMV needs K % 8 == 0 and group_size % 8 == 0, which
every valid int4 weight satisfies. `kernel="gemv" | "gemm"` forces one, for any M. Small M
in the GEMM splits K over extra workgroups (split-K) and sums the slices in a second pass.

Parameter storage: scales and zeros are float32 numbers, but where fp16 holds every one of
them exactly (int4 checkpoints store fp16 scales; so does quantize_weight by default) the
device copy keeps them as fp16 and the kernels' "_p16" variants read those: the same
arithmetic on 2 bytes per parameter instead of 4. The GEMM's 128x64 tile is the exception:
it reads a float32 copy that the weight makes once (GEMM_WIDEN_TILES).

The routing tables below were measured on the H100; docs/tuning.md holds the measurements
behind each one, what bounds the GEMV, and the variants measured and not adopted.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from vkq import layouts
from vkq.layouts import GROUP_PARAMS_NG, INT4_UVEC4, LayoutError, PackedTensor
from vkq.ops.common import (INT8_QPARAMS, NO_SHARED_LIMIT, big_tile_pays, bias_vector, ceil_div,
                            check_fits, check_linear_kernel, dense_need, fits_shared, float_tensor, grid_2d, norm_option,
                            require_float_activations, shared_refusal, tensor_device, weight_needs)
from vkq.ops.contract import (OPS, Call, HostTensor, Op, Plan, PlannedDispatch, TensorSpec,
                              register, register_linear)
from vkq.ops.elementwise import fused_bias, fused_finish, fused_outputs, fused_parts
from vkq.ops.rms_norm import NORMED_X, norm_first
from vkq.quantized_weight import PARAM_DTYPES, QuantizedWeight
from vkq.reference.q4gsw import q4gsw_linear_reference
from vkq.runtime import Buffer, CommandBatch, Device, default_device
from vkq.shaderlib import ShaderError, declared_variants, variant_name

#: Format of the prepacked device weight (Q4gswWeight); bump VERSION when its arrays change.
FORMAT = "q4gsw_weight"
VERSION = 2  # v2: group parameters may be stored as fp16 (param_dtype)
#: Source layouts a Q4gswWeight is built from (name, version).
WEIGHT_LAYOUT = (INT4_UVEC4, 1)
PARAMS_LAYOUT = (GROUP_PARAMS_NG, 1)

# ----------------------------------------------------------------------------- packed weight
class Q4gswWeight:
    """int4 group-wise weights resident on one device, ready for the q4gsw kernels.

    Self-describing: `format`/`version` name this packed type, `layouts` the layouts of its
    arrays ("int4_uvec4" words, "group_params_ng" scales/zeros), `shape` is the logical
    (N, K), `param_dtype` how the scales/zeros are stored ("float32", or "float16" pairs from
    vkq.layouts.half_words where fp16 holds them exactly). Build it with
    :func:`prepack_q4gsw` (from PackedTensors) or let `linear` build one from a
    QuantizedWeight. Owns its buffers: `close()` frees them.
    """

    format = FORMAT
    version = VERSION

    def __init__(self, device: Device, shape: tuple[int, int], group_size: int,
                 weight: Buffer, scales: Buffer, zeros: Buffer | None,
                 param_dtype: str = "float32", fp16_exponent: int | None = None):
        if param_dtype not in ("float16", "float32"):
            raise ValueError(f"param_dtype must be 'float16' or 'float32', got {param_dtype!r}")
        self.device = device
        self.shape = (int(shape[0]), int(shape[1]))
        self.group_size = int(group_size)
        self.n_groups = self.shape[1] // self.group_size
        self.weight, self.scales, self.zeros = weight, scales, zeros
        self.param_dtype = param_dtype
        #: E with max|w| * 2^-E < 2^15 (fp16_exponent()): the coopmat GEMM's weight scaling;
        #: None where unknown or unusable, and then the fp32 GEMM runs instead.
        self.fp16_exponent = fp16_exponent
        self._wide: list[Buffer] | None = None  # float32 copies of fp16 params (float32_params)
        self.layouts = {"weight": WEIGHT_LAYOUT, "params": PARAMS_LAYOUT}

    @property
    def has_zeros(self) -> bool:
        return self.zeros is not None

    @property
    def half_params(self) -> bool:
        return self.param_dtype == "float16"

    @property
    def nbytes(self) -> int:
        """Bytes a kernel streams per pass over the weight (words + scales + zeros)."""
        n, k = self.shape
        per_param = 2 if self.half_params else 4
        return n * ceil_div(k, 32) * 16 + (2 if self.has_zeros else 1) * n * self.n_groups * per_param

    @property
    def closed(self) -> bool:
        return any(b.closed for b in self._buffers())

    def _buffers(self) -> list[Buffer]:
        return [b for b in (self.weight, self.scales, self.zeros) if b is not None]

    def buffers(self) -> dict[str, Buffer]:
        """Role suffix -> buffer, as plans bind them ("weight.weight", "weight.scales", ...);
        "scales32"/"zeros32" once float32_params() has made them."""
        out = {"weight": self.weight, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        if self._wide is not None:
            out["scales32"] = self._wide[0]
            if self.has_zeros:
                out["zeros32"] = self._wide[1]
        elif not self.half_params:
            out["scales32"] = self.scales
            if self.zeros is not None:
                out["zeros32"] = self.zeros
        return out

    def float32_params(self) -> tuple[Buffer, Buffer | None]:
        """(scales, zeros) as float32 buffers, for kernels that read float32 parameters: the
        stored ones, or for fp16 parameters a copy widened on the GPU at first use, kept and
        freed with the weight (4 bytes per parameter more; see GEMM_WIDEN_TILES)."""
        if not self.half_params:
            return self.scales, self.zeros
        if self._wide is None:
            count = self.shape[0] * self.n_groups
            srcs = [b for b in (self.scales, self.zeros) if b is not None]
            wide = [self.device.buffer(4 * count) for _ in srcs]
            try:
                kern = self.device.kernel(variant_name("q4gsw_params_widen"))
                with self.device.batch() as b:
                    for src, dst in zip(srcs, wide):
                        b.dispatch(kern, grid_2d(ceil_div(count, 256), self.device.caps.max_workgroup_count[0]),
                                   buffers={"t_out": dst, "t_in": src}, push={"count": count})
            except BaseException:
                for buf in wide:
                    buf.close()
                raise
            self._wide = wide
        return self._wide[0], self._wide[1] if self.has_zeros else None

    def copy(self) -> "Q4gswWeight":
        """A distinct device copy (copied on the GPU, no host traffic): the same values at
        other addresses, e.g. one per layer of a model built from one random layer."""
        bufs = [self.device.buffer(b.nbytes) if b is not None else None
                for b in (self.weight, self.scales, self.zeros)]
        with self.device.batch() as b:
            for src, dst in zip((self.weight, self.scales, self.zeros), bufs):
                if src is not None:
                    b.copy(src, dst)
        return Q4gswWeight(self.device, self.shape, self.group_size, *bufs, param_dtype=self.param_dtype,
                           fp16_exponent=self.fp16_exponent)

    def close(self) -> None:
        for b in self._buffers() + (self._wide or []):
            b.close()

    def __repr__(self) -> str:
        kind = "asymmetric" if self.has_zeros else "symmetric"
        return (f"<vkq Q4gswWeight {self.format} v{self.version} shape={self.shape} "
                f"group_size={self.group_size} {kind} {self.param_dtype} params>")


def prepack_q4gsw(weight: PackedTensor, params: PackedTensor, device: Device | None = None,
                  param_dtype: str = "auto") -> Q4gswWeight:
    """Upload packed int4 weights and their group parameters as a :class:`Q4gswWeight`.

    Args:
        weight: "int4_uvec4" tensor (vkq.layouts.pack_int4_weight).
        params: "group_params_ng" tensor, scales (and zeros) [N, n_groups]
            (vkq.layouts.pack_group_params). Parameters in any other layout, such as the
            transposed "group_params_gn", raise LayoutError saying how to repack them.
        param_dtype: how the device stores scales/zeros. "auto" (default): fp16 where fp16
            holds every one of them exactly (vkq.layouts.fits_half; the kernels then stream
            half the parameter bytes and compute with the same numbers), float32 otherwise.
            "float16" insists (ValueError if not exact); "float32" never converts.
    """
    for what, p in (("weight", weight), ("params", params)):
        if not isinstance(p, PackedTensor):
            raise TypeError(f"{what} must be a vkq.layouts.PackedTensor, got {type(p).__name__}")
    try:
        weight.expect(*WEIGHT_LAYOUT)
        params.expect(*PARAMS_LAYOUT)
    except LayoutError as e:
        raise LayoutError(f"q4gsw linear: {e}") from None
    if weight.shape != params.shape:
        raise ValueError(f"weight shape {weight.shape} and group-parameter shape {params.shape} "
                         f"differ (both are the logical (N, K))")
    n, k = weight.shape
    gs = params.param("group_size")
    n_groups = layouts.check_group_size(gs, k)
    if params.param("n_groups") != n_groups:
        raise LayoutError(f"group params say n_groups={params.param('n_groups')}, but K={k} / "
                          f"group_size={gs} = {n_groups}")
    words = weight.array("data", (n, ceil_div(k, 32), 4), np.uint32)
    scales = params.array("scales", (n, n_groups), np.float32)
    zeros = params.array("zeros", (n, n_groups), np.float32) if params.param("has_zeros") else None
    arrays = [a for a in (scales, zeros) if a is not None]
    half = stored_param_dtype(scales, zeros, param_dtype) == "float16"
    device = device or default_device()
    check_fits(device.caps, weight_needs(4, (n, k), gs, zeros is not None))
    bufs = [device.upload(words)]
    try:
        for a in arrays:
            bufs.append(device.upload(layouts.half_words(a) if half else a))
    except BaseException:
        for b in bufs:
            b.close()
        raise
    return Q4gswWeight(device, (n, k), gs, bufs[0], bufs[1], bufs[2] if zeros is not None else None,
                       param_dtype="float16" if half else "float32",
                       fp16_exponent=fp16_exponent(scales, zeros))


def fp16_exponent(scales: np.ndarray, zeros: np.ndarray | None) -> int | None:
    """The power of two 2^E that brings every dequantized weight w = (u - 8) * s + z below
    2^15 in magnitude (max|w| * 2^-E in [2^14, 2^15)): the coopmat GEMM rounds w * 2^-E to
    fp16, whose normal range then spans 29 binades below the largest weight. None (the
    coopmat GEMM is not used) if a parameter is not finite or 2^-E is not a normal float32."""
    s = np.asarray(scales, np.float64)
    z = np.zeros_like(s) if zeros is None else np.asarray(zeros, np.float64)
    if s.size == 0:
        return 0
    largest = float(max(np.max(np.abs(z - 8 * s)), np.max(np.abs(z + 7 * s))))  # u = 0, u = 15
    if not math.isfinite(largest):
        return None
    if largest == 0.0:
        return 0
    e = math.frexp(largest)[1] - 15
    return e if -126 <= e <= 126 else None


def stored_param_dtype(scales: np.ndarray, zeros: np.ndarray | None,
                       param_dtype: str = "auto") -> str:
    """How prepack_q4gsw stores these float32 scales/zeros under `param_dtype` (see there)."""
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(f"param_dtype must be one of {PARAM_DTYPES}, got {param_dtype!r}")
    if param_dtype == "float32":
        return "float32"
    if all(layouts.fits_half(a) for a in (scales, zeros) if a is not None):
        return "float16"
    if param_dtype == "float16":
        raise ValueError("param_dtype='float16': fp16 does not hold every scale/zero exactly "
                         "(or one is below fp16's normal range); use 'auto' or 'float32'")
    return "float32"


def prepack_quantized(w: QuantizedWeight, device: Device) -> Q4gswWeight:
    """Pack a logical int4 QuantizedWeight with the vkq.layouts packers and upload it."""
    n, k = w.shape
    check_fits(device.caps, weight_needs(4, (n, k), w.group_size, w.zeros is not None))
    return prepack_q4gsw(layouts.pack_int4_weight(np.asarray(w.q)),
                         layouts.pack_group_params(w.scales, w.zeros, w.group_size, k), device)


def _device_weight(w: Any, device: Device | None) -> Q4gswWeight:
    _weight_shape(w)  # a QuantizedWeight or a Q4gswWeight, else TypeError
    if isinstance(w, QuantizedWeight):
        if w.bits != 4:
            raise ValueError(f"q4gsw linear needs int4 weights, got bits={w.bits}")
        device = device or default_device()
        return w.prepacked((FORMAT, VERSION), device, lambda: prepack_quantized(w, device))
    if w.format != FORMAT or w.version != VERSION:
        raise LayoutError(f"q4gsw linear needs a '{FORMAT}' v{VERSION} weight, got "
                          f"'{w.format}' v{w.version}; rebuild it with prepack_q4gsw()")
    if device is not None and device is not w.device:
        raise ValueError("the weight lives on another device than the one asked for; "
                         "prepack it on that device")
    if w.closed:
        raise ValueError("this Q4gswWeight has been closed")
    return w


def int4_linear_call(x: Any, w: Any, bias: Any, options: Mapping[str, Any], shape: tuple[int, int],
                     extra_needs: Callable[[TensorSpec], list[Any]] = lambda spec: []) -> Call:
    """The Call of an int4 linear (this op, and qta8a_qga4w_linear with act_quant="int8")
    once the op has checked its own options and found the weight's (N, K) `shape`: input "x"
    (and "residual"), the bias in the product's channel order, rms_norm='s weight and eps,
    the fused weight's parts and epilogue; x, y and `extra_needs(x's spec)` are checked
    against the device's limits before the weight is packed."""
    base, parts, epilogue = fused_parts(w)
    n, k = shape
    inputs = {"x": float_tensor("x", x)}
    if options.get("residual") is not None:
        inputs["residual"] = float_tensor("residual", options["residual"])
    b32 = fused_bias(bias_vector(bias, n), epilogue)
    spec = inputs["x"].spec
    if spec.shape:
        device = (options.get("device") or getattr(base, "device", None)
                  or tensor_device(x) or default_device())
        check_fits(device.caps, [dense_need("float32 output y", (spec.rows, n))] + extra_needs(spec)
                   + ([dense_need("float32 activations x", (spec.rows, k))]
                      if isinstance(inputs["x"], HostTensor) else []))
    norm_weight, norm_eps = norm_option(options.get("rms_norm"), k)
    attrs = {"kernel": options.get("kernel", "auto"), "has_bias": b32 is not None,
             "parts": parts, "epilogue": epilogue, "norm_eps": norm_eps}
    return Call(inputs, attrs, base, {"bias": b32, "norm_weight": norm_weight},
                fused_finish(parts, epilogue))


def _weight_shape(w: Any) -> tuple[int, int]:
    """(N, K) of a weight linear takes, or the TypeError saying what it takes."""
    if not isinstance(w, (QuantizedWeight, Q4gswWeight)):
        raise TypeError(f"w must be a vkq.QuantizedWeight (bits=4) or a Q4gswWeight, "
                        f"got {type(w).__name__}")
    return w.shape


# ----------------------------------------------------------------------------- variants
@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """Workgroup shape of the GEMV (see q4gsw_linear_gemv.comp.j2): KS warps split K; in a
    warp, RW row slots of 32/RW lanes each split K too; every lane carries R channels and
    reads U words of each per step. A workgroup owns RW*R channels. `xs`: x is staged
    through shared memory with coalesced loads instead of read per lane from global memory.
    `mr`: rows of x per workgroup (small batches; needs `xs`), each weight read once for all."""

    rw: int
    r: int
    u: int
    ks: int
    xs: bool = False
    mr: int = 1

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "GemvConfig":
        """The shape of a declared GEMV variant, from its template parameters."""
        return cls(params["RW"], params["R"], params["U"], params["KS"], params.get("XS", False),
                   params.get("MR", 1))

    @property
    def rows(self) -> int:
        return self.rw * self.r

    @property
    def tag(self) -> str:
        return (f"rw{self.rw}r{self.r}u{self.u}k{self.ks}" + ("x" if self.xs else "")
                + (f"m{self.mr}" if self.mr > 1 else ""))

    @property
    def shared_bytes(self) -> int:
        """Shared memory of the variant: the reduction array, plus the x double buffers."""
        jw = 32 // self.rw
        red = 4 * self.rows * self.mr * self.ks * jw
        xv = 8 * jw * self.u  # vec4s of x per warp, step and row, padded by 1 per 8 below
        return red + (16 * self.ks * 2 * self.mr * (xv + xv // 8) if self.xs else 0)

    @property
    def norm_shared_bytes(self) -> int:
        """Shared memory the rms_norm folded in adds: one sum of squares per lane."""
        return 4 * 32 * self.ks


#: The shape used where the device lacks subgroup shuffles (shared-memory reduction only),
#: or has too little shared memory for the routed one (fits the Vulkan minimum of 16 KiB).
GEMV_FALLBACK = GemvConfig(1, 4, 1, 2)
#: GEMV shape by (N, K): the first rule whose limits hold. Measured on the H100 with
#: tune_gemv (vkq/bench/suites/q4gsw_linear.py); see docs/tuning.md §q4gsw GEMV shapes.
GEMV_CONFIGS: tuple[tuple[int, int, GemvConfig], ...] = (
    # (max N, max K, config)
    (2048, 1 << 62, GemvConfig(2, 2, 1, 4, xs=True)),
    (8191, 8191, GemvConfig(4, 2, 1, 4, xs=True)),
    (1 << 62, 8191, GemvConfig(4, 4, 1, 4, xs=True)),
    (1 << 62, 1 << 62, GemvConfig(4, 4, 1, 8, xs=True)),
)
#: Batches of up to GEMV_MAX_ROWS rows run the GEMV too, MR rows of x per workgroup; the
#: shape by (max N, max M). Both measured on the H100 against the GEMM; see
#: docs/tuning.md §q4gsw batch GEMV shapes.
GEMV_MAX_ROWS = 24
GEMV_BATCH_CONFIGS: tuple[tuple[int, int, GemvConfig], ...] = (
    # (max N, max M, config)
    (2048, 8, GemvConfig(4, 2, 1, 4, xs=True, mr=2)),
    (1 << 62, 2, GemvConfig(4, 4, 1, 4, xs=True, mr=2)),
    (1 << 62, 1 << 62, GemvConfig(8, 2, 1, 4, xs=True, mr=4)),
)
#: GEMM tile by M: the first rule whose limit holds. Measured on the H100 (tune_gemm); see
#: docs/tuning.md §q4gsw GEMM tiles.
GEMM_TILES: tuple[tuple[int, str], ...] = ((32, "32x64"), (64, "64x64"), (1 << 62, "128x64"))
#: Where a device's shared memory is too small for the routed tile (128x64 needs 24 KiB), the
#: first of these that fits (64x64 needs 16 KiB, the Vulkan minimum).
GEMM_SMALLER_TILES = ("64x64", "32x64", "16x64")
#: Tiles that read float32 parameters even for an fp16-parameter weight (from the float32
#: copy Q4gswWeight.float32_params makes on first use): decoding fp16 in them measured
#: slower on the H100; see docs/tuning.md §q4gsw GEMM float32 parameters.
GEMM_WIDEN_TILES = ("128x64", "64x128")


def gemv_group_mode(group_size: int) -> str:
    """"word": one group per 32-nibble word (gs % 32 == 0); "comp": per 8-nibble component."""
    return "word" if group_size % 32 == 0 else "comp"


def pick_gemv_config(n: int, k: int, max_shared_memory: int = 1 << 62,
                     subgroup: bool = True, m: int = 1) -> GemvConfig | None:
    """The routed GEMV shape for M rows of (N, K). M == 1: GEMV_FALLBACK without subgroup
    shuffles, or where the routed shape needs more shared memory than the device has.
    M > 1 (GEMV_BATCH_CONFIGS): None there, and the GEMM runs instead."""
    if m > 1:
        cfg = next(c for max_n, max_m, c in GEMV_BATCH_CONFIGS if n <= max_n and m <= max_m)
        return cfg if subgroup and cfg.shared_bytes <= max_shared_memory else None
    if not subgroup:
        return GEMV_FALLBACK
    cfg = next(c for max_n, max_k, c in GEMV_CONFIGS if n <= max_n and k <= max_k)
    return cfg if cfg.shared_bytes <= max_shared_memory else GEMV_FALLBACK


def gemv_variant(asym: bool, group_size: int, cfg: GemvConfig, subgroup: bool = True,
                 half_params: bool = False, norm: bool = False) -> str:
    """The declared GEMV variant of this weight kind and shape (ShaderError if undeclared);
    `norm`: with the rms_norm of x folded in."""
    return variant_name("q4gsw_gemv", ASYM=bool(asym), GROUP=gemv_group_mode(group_size),
                        SHAPE=cfg.tag, SUBGROUP=bool(subgroup), P16=bool(half_params), NORM=bool(norm))


#: The GEMV folds an rms_norm of x in only for eps at least this large: it sums squares at a
#: 2^-64 scale, where elements below 2^-31 add nothing (see the GEMV template's header).
NORM_MIN_EPS = 1e-12


def gemv_folds_norm(dev: Device, w: Q4gswWeight, cfg: GemvConfig | None, subgroup: bool,
                    eps: float) -> bool:
    """Whether the GEMV of this weight and shape applies an rms_norm of x itself: one row of x,
    eps large enough, the shared memory there, and the NORM variant declared for the shape."""
    if cfg is None or cfg.mr > 1 or eps < NORM_MIN_EPS:
        return False
    if cfg.shared_bytes + cfg.norm_shared_bytes > dev.caps.max_shared_memory:
        return False
    try:
        gemv_variant(w.has_zeros, w.group_size, cfg, subgroup, w.half_params, norm=True)
    except ShaderError:
        return False
    return True


def gemm_variant(asym: bool, m: int, tile: str | None = None, half_params: bool = False) -> str:
    """The declared GEMM variant for M rows (the GEMM_TILES tile unless `tile` forces one)."""
    tile = tile or next(t for max_m, t in GEMM_TILES if m <= max_m)
    return variant_name("q4gsw_gemm", ASYM=bool(asym), TILE=tile, P16=bool(half_params))


def route(m: int, kernel: str) -> str:
    """"gemv", "gemm" or "coopmat" for M rows under the user's `kernel` choice (before the
    device has its say: record_linear runs a GEMM where no GEMV shape serves M > 1 on the
    device, and gemm_kind picks the GEMM: under "auto" the coopmat one where the device and
    weight allow)."""
    if check_linear_kernel(kernel) == "auto":
        return "gemv" if m <= GEMV_MAX_ROWS else "gemm"
    return kernel


def use_subgroup(dev: Device, gemv_subgroup: bool | None) -> bool:
    """Whether the GEMV reduces with subgroup shuffles: the caller's choice, else the device's."""
    return dev.caps.subgroup_shuffle if gemv_subgroup is None else gemv_subgroup


def gemv_shape(dev: Device, n: int, k: int, m: int, kernel: str = "auto",
               gemv_config: GemvConfig | None = None,
               gemv_subgroup: bool | None = None) -> GemvConfig | None:
    """The GEMV workgroup shape that runs M rows of (N, K) on `dev`, or None where the GEMM
    runs instead (route() says "gemm", or M > 1 and the device has no GEMV shape for it)."""
    if route(m, kernel) != "gemv":
        return None
    sub = use_subgroup(dev, gemv_subgroup)
    cfg = gemv_config or pick_gemv_config(n, k, dev.caps.max_shared_memory, sub, m)
    if cfg is None and kernel == "gemv":
        raise ValueError(f"kernel='gemv' with M = {m} > 1 needs subgroup shuffles and "
                         f"{pick_gemv_config(n, k, m=m).shared_bytes} bytes of shared memory; "
                         f"this device has {dev.caps.max_shared_memory}")
    if cfg is not None:
        if cfg.mr > 1 and not sub:
            raise ValueError(f"GEMV shape {cfg.tag} (rows of x) needs subgroup shuffles")
        if m > 1 and cfg.mr == 1:
            raise ValueError(f"GEMV shape {cfg.tag} takes one row of x; M = {m} needs a shape "
                             f"with rows (mr > 1)")
        if cfg.shared_bytes > dev.caps.max_shared_memory:
            raise ValueError(f"GEMV shape {cfg.tag} needs {cfg.shared_bytes} bytes of shared "
                             f"memory, this device has {dev.caps.max_shared_memory}")
    return cfg


# ----------------------------------------------------------------------------- plan
def linear_dispatches(dev: Device, w: Q4gswWeight, m: int, has_bias: bool, *, kernel: str = "auto",
                      gemv_config: GemvConfig | None = None, gemv_subgroup: bool | None = None,
                      gemm_tile: str | None = None, gemm_splits: int | None = None,
                      coopmat_tile: str | None = None, coopmat_splits: int | None = None,
                      out: str = "y", epilogue: int = 0, x: str = "x",
                      norm_eps: float | None = None) -> tuple[list[PlannedDispatch], dict[str, int]]:
    """The dispatches computing `out[:m*N] = x[:m*K] @ dequant(w).T (+ bias)` and the scratch
    they need (role -> bytes). Roles: `x`, `out`, "bias" (or "dummy"), "weight.*",
    "scratch.partials" (split-K), "scratch.xh"/"scratch.rowexp" (the coopmat GEMM's fp16
    x), "residual" (`epilogue` 1). `gemv_config` forces a GEMV workgroup shape,
    `gemv_subgroup` False its shared-memory-only reduction, `gemm_tile`/`gemm_splits` a GEMM
    tile / split-K, `coopmat_tile`/`coopmat_splits` the coopmat GEMM's. `epilogue` (GEMV
    only, see the GEMV template): 1 adds the residual, 2 applies silu_mul to alternating
    gate/up channels. `norm_eps`: the GEMV folds in rms_norm(x, "norm_weight", norm_eps)
    (the caller checked gemv_folds_norm)."""
    n, k = w.shape
    sub = use_subgroup(dev, gemv_subgroup)
    cfg = gemv_shape(dev, n, k, m, kernel, gemv_config, sub)
    bias = "bias" if has_bias else "dummy"
    bufs = {"t_out": out, "t_x": x, "t_weight": "weight.weight", "t_scales": "weight.scales",
            "t_bias": bias}
    if w.has_zeros:
        bufs["t_zeros"] = "weight.zeros"
    if k >= 1 << 31:  # both shaders build their nibble-to-float exponent from pc.k >> 31
        raise ValueError(f"the q4gsw kernels support K < 2^31, got K = {k}")
    if cfg is not None:
        name = gemv_variant(w.has_zeros, w.group_size, cfg, subgroup=sub, half_params=w.half_params,
                            norm=norm_eps is not None)
        units = w.group_size // (32 if gemv_group_mode(w.group_size) == "word" else 8)
        gx, gy, _ = grid_2d(ceil_div(n, cfg.rows), dev.caps.max_workgroup_count[0])
        blocks = ceil_div(m, cfg.mr)  # gl_WorkGroupID.z: a block of mr rows of x
        if blocks > dev.caps.max_workgroup_count[2]:
            raise ValueError(f"M = {m} needs {blocks} GEMV row blocks, over this device's "
                             f"{dev.caps.max_workgroup_count[2]}; use kernel='gemm' or 'auto'")
        if epilogue == 2 and cfg.rows % 2:
            raise ValueError(f"GEMV shape {cfg.tag} has an odd number of channels: no silu_mul pairs")
        push = {"n": n, "k": k, "n_groups": w.n_groups, "has_bias": int(has_bias), "epilogue": epilogue}
        if cfg.mr > 1:
            push["m"] = m
        if norm_eps is not None:
            push["eps"] = norm_eps
            bufs["t_norm"] = "norm_weight"
        bufs["t_residual"] = "residual" if epilogue == 1 else "dummy"
        return [PlannedDispatch(name, (gx, gy, blocks), bufs, push, {"GROUP_UNITS": units})], {}
    if epilogue or norm_eps is not None:
        raise ValueError("the GEMM applies no epilogue or norm itself: run them as separate dispatches")
    if gemm_kind(dev, w, m, kernel) == "coopmat":
        return coopmat_dispatches(dev, w, m, bufs, out, plan_coopmat(
            m, n, k, w.has_zeros, coopmat_tile, coopmat_splits, w.half_params,
            dev.caps.max_shared_memory))
    plan = plan_gemm(m, n, k, w.has_zeros, gemm_tile, gemm_splits, w.half_params,
                     dev.caps.max_shared_memory)
    if plan.float32_params:
        w.float32_params()  # made once, on first use
        bufs["t_scales"] = "weight.scales32"
        if w.has_zeros:
            bufs["t_zeros"] = "weight.zeros32"
    return _gemm_passes(dev, w, m, plan, bufs, out, {})


def _gemm_passes(dev: Any, w: Q4gswWeight, m: int, plan: GemmPlan | CoopmatPlan,
                 bufs: dict[str, str], out: str, push: dict[str, Any]
                 ) -> tuple[list[PlannedDispatch], dict[str, int]]:
    """Either GEMM (`plan`: its variant, tile, split-K) over N / BN x splits workgroups in
    row blocks, and with split-K the pass summing the slices into `out` (adding the bias
    there); the partials' scratch. `push`: the GEMM's own push constants beyond the shared
    ones."""
    n, k = w.shape
    max_x = dev.caps.max_workgroup_count[0]
    gx = ceil_div(n, plan.bn)
    if gx > max_x or plan.splits > dev.caps.max_workgroup_count[2]:
        raise ValueError(f"N = {n} needs {gx} workgroups along x, over this device's {max_x}")
    scratch: dict[str, int] = {}
    bias = bufs["t_bias"]
    if plan.splits > 1:
        scratch["scratch.partials"] = 4 * plan.splits * m * n
        bufs = dict(bufs, t_out="scratch.partials")
    push = dict(push, m=m, n=n, k=k, n_groups=w.n_groups, split_chunks=plan.split_chunks,
                has_bias=int(bias == "bias" and plan.splits == 1))
    out_list = _row_blocks(dev, plan.variant, plan.bm, (gx, plan.splits), m, bufs, push,
                           {"GROUP_COMPS": w.group_size // 8})
    if plan.splits > 1:
        out_list.append(_split_reduce(dev, m, n, plan.splits, out, bias))
    return out_list, scratch


def _row_blocks(dev: Any, variant: str, bm: int, grid_xz: tuple[int, int], m: int,
                bufs: dict[str, str], push: dict[str, Any], spec: dict[str, int]) -> list[PlannedDispatch]:
    """A GEMM over M rows as dispatches of at most the device's y workgroup count of BM-row
    tiles each (`row_offset` in the push constants says where one starts)."""
    rows_per_dispatch = dev.caps.max_workgroup_count[1] * bm
    return [PlannedDispatch(variant, (grid_xz[0], ceil_div(min(rows_per_dispatch, m - row0), bm), grid_xz[1]),
                            bufs, dict(push, row_offset=row0), spec)
            for row0 in range(0, m, rows_per_dispatch)]


def _split_reduce(dev: Any, m: int, n: int, splits: int, out: str, bias: str) -> PlannedDispatch:
    """The pass summing split-K slices ("scratch.partials") into `out`, adding `bias` (a
    role, or "dummy")."""
    return PlannedDispatch(
        variant_name("q4gsw_gemm_reduce"), grid_2d(ceil_div(m * n, 256), dev.caps.max_workgroup_count[0]),
        {"t_out": out, "t_part": "scratch.partials", "t_bias": bias},
        {"mn": m * n, "n": n, "splits": splits, "has_bias": int(bias == "bias")})


def record_linear(b: CommandBatch, w: Q4gswWeight, x: Buffer, y: Buffer, m: int,
                  bias: Buffer | None = None, *, scratch: Buffer | dict[str, Buffer] | None = None,
                  **choice: Any) -> list[Buffer]:
    """Record `y[:m*N] = x[:m*K] @ dequant(w).T (+ bias)` into a batch (buffers already sized).

    The low-level entry point under the op: tests use it with guard regions around x and y
    and to force kernels (`choice`: see linear_dispatches); the benchmark to time them.
    Scratch (split-K partials, the coopmat GEMM's fp16 x; sizes by role from
    `scratch_needs`): pass `scratch` as {role: buffer} (a single buffer serves the split-K
    partials), or buffers are made here and returned; the caller closes returned buffers
    once the batch has run.
    """
    dispatches, need = linear_dispatches(b.device, w, m, bias is not None, **choice)
    buffers: dict[str, Any] = {"x": x, "y": y, "bias": bias, "dummy": b.device.dummy_buffer()}
    buffers.update({f"weight.{r}": buf for r, buf in w.buffers().items()})
    given = scratch if isinstance(scratch, dict) else {"scratch.partials": scratch}
    temps: list[Buffer] = []
    for role, nbytes in need.items():
        buf = given.get(role)
        if buf is None or buf.nbytes < nbytes:
            buf = b.device.buffer(nbytes)
            temps.append(buf)
        buffers[role] = buf
    OPS[Q4gswLinear.name].record(b, buffers, Plan(dispatches, {}))
    return temps


def scratch_needs(dev: Device, w: Q4gswWeight, m: int, **choice: Any) -> dict[str, int]:
    """Scratch bytes by role that record_linear needs for this call (see linear_dispatches)."""
    return linear_dispatches(dev, w, m, False, **choice)[1]


@register
class Q4gswLinear(Op):
    """`y = x @ dequant(w).T (+ bias) (+ residual)` for int4 group-wise weights w [N, K].

    Inputs: "x" dense float32 [..., K]; optional "residual" [..., N] (added after the
    product: a decoder layer's skip connection). Constants: optional "bias" [N], optional
    "norm_weight" [K] with attribute "norm_eps": the product is taken of rms_norm(x,
    norm_weight, norm_eps) (folded into the one-row GEMV, else an rms_norm dispatch first).
    Attributes: "kernel" ("auto" | "gemv" | "gemm" | "coopmat"), "parts"/"epilogue" for fused weights
    (see vkq.ops.elementwise.fused_outputs), and the forcing choices of linear_dispatches.
    """

    name = "q4gsw_linear"
    reference = staticmethod(q4gsw_linear_reference)
    constant_roles = ("bias", "norm_weight")

    def prepack(self, weight: Any, device: Device) -> Q4gswWeight:
        return _device_weight(weight, device)

    def linear_call(self, x: Any, w: Any, bias: Any, options: Mapping[str, Any]) -> Call:
        base = fused_parts(w)[0]
        n, k = _weight_shape(base)
        given = [q for q in INT8_QPARAMS if options.get(q) is not None]
        if given:
            raise TypeError(f"int4 weight-only linear takes float activations: {', '.join(given)} "
                            f"must not be given")
        if options.get("activation", "none") != "none":
            raise ValueError("int4 weight-only linear has no fused activation; fuse gate and up "
                             "with vkq.fuse_linear(..., epilogue='silu_mul')")
        return int4_linear_call(x, w, bias, options, (n, k))

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        n, k = weight.shape
        require_float_activations(x, k, "int4 weight-only linear takes float32 activations")
        m = x.rows
        choice = {c: attrs[c] for c in _CHOICES if attrs.get(c) is not None}
        # the GEMV applies the residual and silu_mul itself (pairs need an even shape);
        # gemv_shape also checks the kernel choice, before any work
        cfg = gemv_shape(device, n, k, max(m, 1), choice.get("kernel", "auto"),
                         choice.get("gemv_config"), choice.get("gemv_subgroup"))
        stage = fused_outputs(device, x.shape[:-1], n, attrs.get("parts"), attrs.get("epilogue"),
                              residual=inputs.get("residual"),
                              kernel_epilogues=cfg is not None and cfg.rows % 2 == 0)
        eps = attrs.get("norm_eps")
        folded = eps is not None and gemv_folds_norm(
            device, weight, cfg, use_subgroup(device, choice.get("gemv_subgroup")), eps)
        separate_norm = eps is not None and not folded and m > 0  # rms_norm first, into scratch
        x_role = NORMED_X if separate_norm else "x"
        dispatches, scratch = linear_dispatches(device, weight, m, bool(attrs.get("has_bias")),
                                                out=stage.product, epilogue=stage.in_kernel, x=x_role,
                                                norm_eps=eps if folded else None,
                                                **choice) if m else ([], {})
        scratch.update(stage.scratch)
        if separate_norm:
            norm_first(device, m, k, eps, dispatches, scratch)
        return Plan(dispatches + (stage.dispatches if m else []), stage.outputs, scratch, stage.views)


_CHOICES = ("kernel", "gemv_config", "gemv_subgroup", "gemm_tile", "gemm_splits", "coopmat_tile",
            "coopmat_splits")


#: Split-K aims for at least this many GEMM workgroups (4 per SM on a 132-SM H100): a small-M
#: GEMM has few output tiles, each walking all of K. Measured on the H100; see
#: docs/tuning.md §q4gsw GEMM split-K.
SPLIT_TARGET_WORKGROUPS = 528
#: ... while every split keeps at least this many 32-wide chunks of K; the count is then
#: rounded to a power of two (equal slices of the usual K; same section of docs/tuning.md).
SPLIT_MIN_CHUNKS = 8


@dataclasses.dataclass(frozen=True)
class GemmPlan:
    variant: str
    bm: int
    bn: int
    splits: int
    split_chunks: int
    float32_params: bool = False  # fp16 parameters read through Q4gswWeight.float32_params

    @property
    def kernels(self) -> list[str]:
        """Kernel names one GEMM call dispatches (for routing checks)."""
        return [self.variant] + ([variant_name("q4gsw_gemm_reduce")] if self.splits > 1 else [])


def plan_gemm(m: int, n: int, k: int, asym: bool, tile: str | None = None,
              splits: int | None = None, half_params: bool = False,
              max_shared: int = NO_SHARED_LIMIT) -> GemmPlan:
    """Tile and split-K for an M x N x K GEMM on a device with `max_shared` bytes of shared
    memory (the GEMM_TILES tile, else the first of GEMM_SMALLER_TILES that fits)."""
    def variant_of(t: str) -> str:
        return gemm_variant(asym, m, t, half_params and t not in GEMM_WIDEN_TILES)
    if tile is None:
        routed = next(t for max_m, t in GEMM_TILES if m <= max_m)
        tile = next((t for t in (routed, *GEMM_SMALLER_TILES) if fits_shared(variant_of(t), max_shared)),
                    GEMM_SMALLER_TILES[-1])
    widen = half_params and tile in GEMM_WIDEN_TILES
    variant = variant_of(tile)
    bm, bn = (int(v) for v in tile.split("x"))
    kb = ceil_div(k, 32)
    if splits is None:
        tiles = ceil_div(m, bm) * ceil_div(n, bn)
        want = ceil_div(SPLIT_TARGET_WORKGROUPS, tiles)
        splits = max(1, min(1 << round(math.log2(want)), kb // SPLIT_MIN_CHUNKS))
    splits = max(1, min(int(splits), kb))
    chunks = ceil_div(kb, splits)
    return GemmPlan(variant, bm, bn, ceil_div(kb, chunks), chunks, widen)


# ----------------------------------------------------------------------------- coopmat GEMM
#: The fp16 tensor-core shape the coopmat GEMM multiplies with (M x N x K, A/B, C/result).
COOPMAT_SHAPE = (16, 16, 16, "float16", "float32")
#: Coopmat tiles, largest first where its tiles make enough workgroups: COOPMAT_HUGE_TILE
#: (256x128 as 16 subgroups of 64x32, K steps of 32, one buffer, loads two steps ahead) from
#: COOPMAT_HUGE_TILES workgroups (1.5 waves on 132 SMs: at 64-128 it leaves SMs idle),
#: COOPMAT_BIG_TILE (128x128 as 16 subgroups of 32x32, K steps of 64, one buffer, loads two
#: steps ahead) from COOPMAT_BIG_TILES, unsplit; else 64x64 (4 of 32x32) with split-K towards
#: COOPMAT_SPLIT_TARGET workgroups. Measured on the H200 (132 SMs); see docs/tuning.md
#: §q4gsw coopmat GEMM and §Main-loop ceilings and the epilogue.
COOPMAT_HUGE_TILE, COOPMAT_BIG_TILE, COOPMAT_SMALL_TILE = "256x128s16pf2", "128x128s16k4pf2", "64x64"
COOPMAT_HUGE_TILES, COOPMAT_BIG_TILES = 192, 96
COOPMAT_SPLIT_TARGET = 264


def coopmat_tile(m: int, n: int, max_shared: int = NO_SHARED_LIMIT) -> str:
    """The routed coopmat tile for an M x N output (COOPMAT_HUGE_TILES, COOPMAT_BIG_TILES) on
    a device with `max_shared` bytes of shared memory. The tiles' shared arrays do not depend
    on the weight's kind: the symmetric fp16-parameter variant speaks for all."""
    for tile, min_workgroups in ((COOPMAT_HUGE_TILE, COOPMAT_HUGE_TILES),
                                 (COOPMAT_BIG_TILE, COOPMAT_BIG_TILES)):
        big = variant_name("q4gsw_coopmat", ASYM=False, TILE=tile, P16=True)
        if big_tile_pays(big, m, n, min_workgroups, max_shared):
            return tile
    return COOPMAT_SMALL_TILE


def coopmat_capable(caps: Any) -> str | None:
    """None if the device runs the coopmat GEMM, else why not (tensor cores are used only
    where the device lists the fp16 shape and has 32-wide subgroups, which the kernel's
    subgroup tiling assumes)."""
    shapes = getattr(caps, "cooperative_matrix", ())
    if not shapes or not caps.has_coopmat(*COOPMAT_SHAPE):
        return "the device lists no fp16 16x16x16 cooperative matrix (tensor cores)"
    if caps.subgroup_size != 32:
        return f"the coopmat GEMM needs 32-wide subgroups, the device has {caps.subgroup_size}"
    if not caps.shader_float16:
        return "the device has no shaderFloat16"
    return shared_refusal(variant_name("q4gsw_coopmat", ASYM=True, TILE=COOPMAT_SMALL_TILE,
                                       P16=False), caps.max_shared_memory)


def gemm_kind(dev: Any, w: Q4gswWeight, m: int, kernel: str) -> str:
    """"coopmat" or "gemm" for a call that does not run the GEMV: `kernel` "coopmat" forces
    the tensor-core GEMM (ValueError where it cannot run), "gemm" the fp32 one, "auto" takes
    the coopmat GEMM where the device runs it and the weight has an fp16 exponent."""
    why = coopmat_capable(dev.caps)
    if why is None and w.fp16_exponent is None:
        why = "the weight's parameters are not finite or out of fp16's scalable range"
    if kernel == "coopmat":
        if why is not None:
            raise ValueError(f"kernel='coopmat': {why}")
        return "coopmat"
    return "coopmat" if kernel == "auto" and why is None else "gemm"


@dataclasses.dataclass(frozen=True)
class CoopmatPlan:
    variant: str
    bm: int
    bn: int
    splits: int
    split_chunks: int

    @property
    def kernels(self) -> list[str]:
        """Kernel names one coopmat GEMM call dispatches (for routing checks)."""
        return ([variant_name("q4gsw_coopmat_prep"), self.variant]
                + ([variant_name("q4gsw_gemm_reduce")] if self.splits > 1 else []))


def plan_coopmat(m: int, n: int, k: int, asym: bool, tile: str | None = None,
                 splits: int | None = None, half_params: bool = False,
                 max_shared: int = NO_SHARED_LIMIT) -> CoopmatPlan:
    """Tile and split-K of the coopmat GEMM for M x N x K (split-K only for the small
    tile unless `splits` forces it: the big one measured slower split, docs/tuning.md)."""
    if tile is None and splits is None and coopmat_tile(m, n, max_shared) != COOPMAT_SMALL_TILE:
        splits = 1
    tile = tile or coopmat_tile(m, n, max_shared)
    variant = variant_name("q4gsw_coopmat", ASYM=bool(asym), TILE=tile, P16=bool(half_params))
    params = declared_variants()[variant][1]
    bm, bn = params["BM"], params["BN"]
    kb = ceil_div(k, 32)
    if splits is None:  # the power of two nearest to the target / tiles
        want = COOPMAT_SPLIT_TARGET / (ceil_div(m, bm) * ceil_div(n, bn))
        splits = max(1, min(1 << max(0, round(math.log2(want))), kb // SPLIT_MIN_CHUNKS))
    chunks = ceil_div(kb, max(1, min(int(splits), kb)))
    return CoopmatPlan(variant, bm, bn, ceil_div(kb, chunks), chunks)


def coopmat_dispatches(dev: Any, w: Q4gswWeight, m: int, bufs: dict[str, str], out: str,
                       plan: CoopmatPlan) -> tuple[list[PlannedDispatch], dict[str, int]]:
    """The prep pass (x -> fp16 rows + exponents), the coopmat GEMM (in row blocks the grid
    allows) and, with split-K, the reduce pass; the scratch they need."""
    k = w.shape[1]
    kp8 = ceil_div(k, 32) * 4
    gemm_bufs = dict(bufs, t_xh="scratch.xh", t_rowexp="scratch.rowexp")
    del gemm_bufs["t_x"]
    passes, scratch = _gemm_passes(dev, w, m, plan, gemm_bufs, out, {
        "w_exp": w.fp16_exponent, "w_scale": math.ldexp(1.0, -w.fp16_exponent)})
    prep = PlannedDispatch(variant_name("q4gsw_coopmat_prep"), grid_2d(m, dev.caps.max_workgroup_count[0]),
                           {"t_xh": "scratch.xh", "t_rowexp": "scratch.rowexp", "t_x": bufs["t_x"]},
                           {"m": m, "k": k, "kp8": kp8})
    return [prep] + passes, dict(scratch, **{"scratch.xh": 16 * m * kp8, "scratch.rowexp": 4 * m})


def describe_variants(caps: Any) -> dict[str, str]:
    sub = bool(getattr(caps, "subgroup_shuffle", True))
    smem = int(getattr(caps, "max_shared_memory", NO_SHARED_LIMIT))
    out = {}
    # fp16 parameters, as quantize_weight makes them; "_p16" dropped with float32 parameters
    for n, k in ((1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336)):
        cfg = pick_gemv_config(n, k, smem, sub)
        out[f"q4gsw GEMV (M=1, N={n}, K={k})"] = gemv_variant(False, 32, cfg, sub, True)
    cfg = pick_gemv_config(4096, 4096, smem, sub)
    out["q4gsw GEMV (gs % 32 != 0)"] = gemv_variant(False, 16, cfg, sub, True)
    for m in (2, 4):
        cfg = pick_gemv_config(4096, 4096, smem, sub, m)
        if cfg is not None:
            out[f"q4gsw GEMV (M={m}, N=4096, K=4096)"] = gemv_variant(False, 32, cfg, sub, True)
    for m in (GEMV_MAX_ROWS + 1, 32, 33, 129):
        out[f"q4gsw GEMM (M={m})"] = plan_gemm(m, 4096, 4096, False, half_params=True,
                                               max_shared=smem).variant
    if coopmat_capable(caps) is None:  # tensor cores: these M run the coopmat GEMM instead
        for m in (GEMV_MAX_ROWS + 1, 512, 2048):
            out[f"q4gsw GEMM on tensor cores (M={m})"] = plan_coopmat(
                m, 4096, 4096, False, half_params=True, max_shared=smem).variant
    return out


register_linear("int4", "float", Q4gswLinear.name)
