"""q4gsw linear (SPEC §3): float activations x int4 group-wise weights -> float32.

    w = vkq.quantize_weight(W, bits=4, group_size=32)        # logical weights
    y = vkq.linear(x, w)                                      # packs + uploads once, then routes
    pw = prepack_q4gsw(pack_int4_weight(q), pack_group_params(s, z, gs, K), device)
    y = linear(x, pw)                                         # already-packed device weights

Routing (SPEC §5): M == 1 -> the cooperative GEMV (`q4gsw_linear_gemv.comp.j2`), whose
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
arithmetic on 2 bytes per parameter instead of 4 (at gs=32, 10 % of a symmetric weight's
bytes, 17 % of an asymmetric one's). The GEMM's 128x64 tile is the exception: it reads a
float32 copy that the weight makes once (GEMM_WIDEN_TILES says why). GEMV on the H100 (one
scratch run at 2644b29, µs, float32 | fp16 parameters, gs=32 symmetric): 4096x4096 7.85 |
7.53, 1024x4096 4.88 | 4.78, 14336x4096 18.45 | 17.92, 4096x14336 17.49 | 16.65; asymmetric
14336x4096 22.71 | 21.32.

What bounds the GEMV (H100, chained µs at the maximum SM clock; diagnostic variants of the
routed shape, one scratch run at a24eda0: real | math and scale loads replaced by one xor
per word | math only, every workgroup reading the same 16 channels so that loads hit L1 |
one streaming read of the real kernel's bytes, from the run at 36fe98e):
  N=14336 K=4096 gs=32  rw4r4u1k4x: 18.49 | 13.78 | 13.53 | 14.57
  N=14336 K=4096 gs=128 rw4r4u1k4x: 17.41 | 13.74 | 13.49 | 12.83
  N=4096 K=14336 gs=32  rw4r4u1k8x: 17.54 | 13.64 | 13.41 | 14.56
  N=4096 K=14336 gs=128 rw4r4u1k8x: 16.15 | 13.66 | 13.32 | 12.80
  N=4096 K=4096 gs=32   rw4r2u1k4x:  7.87 |  6.74 |  6.39 |  6.32
  N=4096 K=4096 gs=128  rw4r2u1k4x:  7.43 |  6.67 |  6.39 |  5.87
  N=1024 K=4096 gs=32   rw2r2u1k4x:  4.93 |  4.24 |  3.95 |  3.73
  N=1024 K=4096 gs=128  rw2r2u1k4x:  4.70 |  4.21 |  3.98 |  3.58
The arithmetic alone takes as long as the weight stream alone, and the two overlap only in
part. Exact fp32 results take three instructions per weight: a LOP3 builds the float, an
FADD removes its offset, and an FFMA accumulates. A register-only microbenchmark of that
pattern runs 8.5 T weights/s on the H100, about 0.84 instructions per clock and scheduler,
which is 6.9 µs for the large shapes. The loop adds ~40 % more instructions per weight (542
per 128 weights at rw4r4u1k4x_p16: x from shared memory, addresses, scale loads and their
fp16 decode, the driver's bounds checks, 32 register moves of the double buffer), and stalls
add the rest. The SASS comes from `scripts/nvidia_sass.py`. Writing the shared x addresses
as base + literal took 33 instructions out of that loop (575 -> 542) and measured
0.05-0.6 µs faster at every routed shape (one scratch run at 82e7de5, interleaved rounds).
Measured and not better (H100): more words in flight per lane (U = 2, 4), more or fewer
warps splitting K (KS = 16; KS = 1, where each warp walks all of K: up to 4x slower), or 8
channels per lane (R = 8, 167 registers) than GEMV_CONFIGS uses: up to 70 % slower. No shape
won at both group sizes; the closest, rw4r4u1k2x at 14336x4096, was 0.3 µs faster at gs=32
and 0.03-0.2 µs slower at gs=128. Prefetching symmetric scales a step ahead: -0.2..+0.2 µs
by shape. Loading x per 8-nibble component: no change, since the compiler schedules the same
way. Unrolling two steps, which removes the loop's register moves: 2-11 % slower. A
tensor-core GEMV (VK_NV_cooperative_matrix, the weights as exact fp16 MMA operands, x split
into scaled fp16 hi/lo pieces): 5-73 % slower at every shape, because each warp has to
convert its own slice of x on every step (branch experiment/mma-gemv has it, with its
numbers). Disabling the driver's bounds checks (VK_EXT_pipeline_robustness): 0.02-0.45 µs
faster. It is not used: an out-of-range bug would then corrupt memory instead of reading
zeros.
Also measured and not better (H100, routed shapes, one scratch run each, the GEMV of fe1321a):
weight loads (and scales) two steps ahead instead of one, +7 registers: 0-17 % slower, e.g.
14336x4096 gs=32 18.56 -> 21.16 µs, 4096x4096 gs=32 7.81 -> 8.56, 1024x4096 unchanged;
x given as bf16 or fp16 (half the x bytes, converted exactly while staged): -0.2..+0.3 µs
against fp32 x (one fp16 outlier, 4.9 -> 9.1 µs), so x traffic does not bound the small
shapes; issuing each next-step weight load right after its channel's math instead of before
the step: within 0.1 µs (the compiler schedules both alike). All of this fits the
instruction-count bound above better than a memory-latency one.
Measured again after the x-address change (scratch runs at cbdf221..dbc499c): no prefetch
at all (each step loads its own words): 0.1-1.6 µs slower at every symmetric shape; weights
two steps ahead: 0.15-3.1 µs slower at M = 1, 1-3 % slower for batches. Nibbles decoded two
at a time as fp16 (one LOP3 for two, then an fp16 -> fp32 convert and an FADD each): NVIDIA's
compiler does not fuse the convert with the subtract, so a register-only microbenchmark ran
11 % slower than the fp32 trick.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Iterator

import numpy as np

from vkq import layouts
from vkq.bench import BenchContext, Row, register
from vkq.bench.timing import Timing, copies_for_l2_cold, time_call
from vkq.layouts import GROUP_PARAMS_NG, INT4_UVEC4, LayoutError, PackedTensor
from vkq.ops.common import (bias_vector, ceil_div, check_fits, dense_need, float_input, grid_2d,
                            weight_needs, wrong_device_input)
from vkq.quantized_weight import PARAM_DTYPES, QuantizedWeight, half_group_params
from vkq.runtime import Buffer, CommandBatch, Device, default_device
from vkq.tensor import DENSE, DeviceTensor

#: Format of the prepacked device weight (Q4gswWeight); bump VERSION when its arrays change.
FORMAT = "q4gsw_weight"
VERSION = 2  # v2: group parameters may be stored as fp16 (param_dtype)
#: Source layouts a Q4gswWeight is built from (name, version).
WEIGHT_LAYOUT = (INT4_UVEC4, 1)
PARAMS_LAYOUT = (GROUP_PARAMS_NG, 1)

KERNELS = ("auto", "gemv", "gemm")


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
                 param_dtype: str = "float32"):
        if param_dtype not in ("float16", "float32"):
            raise ValueError(f"param_dtype must be 'float16' or 'float32', got {param_dtype!r}")
        self.device = device
        self.shape = (int(shape[0]), int(shape[1]))
        self.group_size = int(group_size)
        self.n_groups = self.shape[1] // self.group_size
        self.weight, self.scales, self.zeros = weight, scales, zeros
        self.param_dtype = param_dtype
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
                kern = self.device.kernel("q4gsw_params_widen")
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
                       param_dtype="float16" if half else "float32")


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


#: The shape used where the device lacks subgroup shuffles (shared-memory reduction only),
#: or has too little shared memory for the routed one.
GEMV_FALLBACK = GemvConfig(1, 4, 1, 2)
#: GEMV shape by (N, K): the first rule whose limits hold. From `tune_gemv` on the H100
#: (chained µs, SM clock at its 1980 MHz maximum, best of 2 interleaved rounds; gs=32 | gs=128;
#: four sweep runs of 11-29 shapes each; a shape timed in several runs moved by <= 0.3 µs):
#:   N=1024  K=4096:  rw2r2u1k4x  4.99|4.74  rw4r2u1k8x  4.96|4.78  rw1r4u1k4  5.54|5.42
#:   N=4096  K=4096:  rw4r2u1k4x  8.13|8.05  rw8r2u1k8x  8.33|8.05  rw1r8u1k2 10.57|10.11
#:   N=14336 K=4096:  rw4r4u1k4x 18.52|18.06  rw8r2u1k8x 19.07|18.76  rw1r8u1k2 20.75|20.07
#:   N=4096  K=14336: rw4r4u1k8x 18.25|17.65  rw8r2u1k16x 17.96|17.76  rw1r4u1k2 23.25|22.85
#: Swept again after the one-LOP3 fix (a24eda0; 20 shapes, best of 2 rounds), the routed
#: shapes stayed first or within 0.3 µs of it, and no other shape led at both group sizes:
#:   N=1024  K=4096:  rw2r2u1k4x  4.89|4.69  rw4r2u1k8x  4.96|4.70
#:   N=4096  K=4096:  rw4r2u1k4x  7.84|7.45  rw8r1u1k8x  8.14|8.01  rw4r4u1k8x 8.15|7.83
#:   N=14336 K=4096:  rw4r4u1k4x 18.37|17.38  rw4r4u1k2x 18.09|17.41
#:   N=4096  K=14336: rw4r4u1k8x 17.43|16.16  rw8r2u1k16x 17.58|15.97
#: Staging x through shared memory (x) is what wins: without it the same shapes are 7-25 %
#: slower, the gap growing with K (x loads, not weight loads, saturated the L1). With x
#: staged, row slots (RW > 1) share each x value and more warps split K.
GEMV_CONFIGS: tuple[tuple[int, int, GemvConfig], ...] = (
    # (max N, max K, config)
    (2048, 1 << 62, GemvConfig(2, 2, 1, 4, xs=True)),
    (8191, 8191, GemvConfig(4, 2, 1, 4, xs=True)),
    (1 << 62, 8191, GemvConfig(4, 4, 1, 4, xs=True)),
    (1 << 62, 1 << 62, GemvConfig(4, 4, 1, 8, xs=True)),
)
#: Batches of up to GEMV_MAX_ROWS rows run the GEMV too, with MR rows of x per workgroup
#: (gl_WorkGroupID.z picks the block): each weight is read and turned into floats once per
#: block, where the GEMM's 32-row tiles compute padding rows. Shape by (max N, max M) from
#: one H100 scratch run (K=4096 unless said, gs=32, chained µs, best | GEMM):
#:   M=2:  4096² rw4r4u1k4xm2 8.9 | 63.7, 14336 rw4r4u1k2xm2 22.4 (rw4r4u1k4xm2 23.9) | 217.8,
#:         K=14336 rw4r4u1k4xm2 20.5 | 218.6, N=1024 rw4r2u1k4xm2 5.9 | 22.1
#:   M=4:  rw8r2u1k4xm4 11.7 | 66.5, 36.1 (rw8r2u1k2xm4 33.5) | 218.8, 30.5 | 219.4,
#:         N=1024 rw4r2u1k4xm2 6.0 (rw8r2u1k4xm4 9.1) | 22.7
#:   M=16: rw8r2u1k2xm4 31.6 (rw8r2u1k4xm4 34.1) | 66.3, 103.6 (112.4) | 219.8,
#:         100.6 (103.1) | 220.9, N=1024 rw8r2u1k4xm4 10.6 | 22.7
#: rw8r2u1k2xm4 was up to 48 % slower elsewhere (K=14336, M=4); KS=2 shapes of 4 rows and
#: rw4r2/rw4r4 with MR=4 trailed at every shape; so did, in a later run, 8 warps
#: (rw8r2u1k8xm4, +7-23 %) and one channel per lane (rw8r1u1k4xm4, up to 1.7x slower). The
#: 4-row shapes compile to ~236 registers (x of four rows held per word) and still lead.
#: All routed batch shapes need <= 22.5 KiB of shared memory. The routed shapes against the
#: GEMM (another scratch run, µs, GEMV | GEMM at 4096², 14336x4096, 4096x14336, 1024x4096):
#:   M=16: 34.2|65.9, 112.0|220.0, 128.3|222.6, 10.6|22.9
#:   M=24: 49.1|66.3, 164.3|222.2, 150.8|223.0, 17.9|23.2
#:   M=32: 63.9|66.8, 214.7|223.1, 308.1|224.2, 18.1|23.8
GEMV_MAX_ROWS = 24
GEMV_BATCH_CONFIGS: tuple[tuple[int, int, GemvConfig], ...] = (
    # (max N, max M, config)
    (2048, 8, GemvConfig(4, 2, 1, 4, xs=True, mr=2)),
    (1 << 62, 2, GemvConfig(4, 4, 1, 4, xs=True, mr=2)),
    (1 << 62, 1 << 62, GemvConfig(8, 2, 1, 4, xs=True, mr=4)),
)
#: GEMM tiles by M. First tuned on the H100 before split-K (N=4096 and 14336, K=4096): 32x64
#: for M <= 32 (16x64 was 3 % faster at N=4096 but 5 % slower at N=14336), 64x64 above;
#: 64x128 and tiles 128 wide were slower at every M. Since the dequantisation builds floats
#: with the exponent trick instead of int->float conversions, 128x64 (8 rows per thread)
#: leads from M = 128 (one scratch run, split-K on, K=4096, µs, 128x64 | 64x64):
#:   M=128: N=4096 158 | 176, N=14336 546 | 587;  M=512: N=4096 542 | 666, N=14336 1831 | 2260
#: and at M=32 it was 2.2x slower than 32x64 (rows wasted). M=33..64 keeps 64x64, which
#: wastes no rows there.
GEMM_TILES: tuple[tuple[int, str], ...] = ((32, "32x64"), (64, "64x64"), (1 << 62, "128x64"))
#: Tiles that read float32 parameters even for an fp16-parameter weight (from a float32 copy
#: the weight makes on first use, Q4gswWeight.float32_params). With fp16 parameters decoded
#: in the kernel, NVIDIA's compiler made the 128x64 tile 4-20 % slower at M = 128..512 (the
#: decode is 2 instructions per 1024 FMAs; its hot loop came out the same apart from
#: registers; decoding at the load, at the use, or by select all measured slower, H100
#: scratch runs at b225a06), while the 32x64 and 64x64 tiles ran within 1 %. For prefill
#: shapes the copy costs memory once instead of time per call. 64x128 (not routed) follows.
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
                 half_params: bool = False) -> str:
    sym = "asym" if asym else "sym"
    return (f"q4gsw_gemv_{sym}_{gemv_group_mode(group_size)}_{cfg.tag}"
            + ("" if subgroup else "_smem") + ("_p16" if half_params else ""))


def gemm_variant(asym: bool, m: int, tile: str | None = None, half_params: bool = False) -> str:
    tile = tile or next(t for max_m, t in GEMM_TILES if m <= max_m)
    return f"q4gsw_gemm_{'asym' if asym else 'sym'}_{tile}" + ("_p16" if half_params else "")


def route(m: int, kernel: str) -> str:
    """"gemv" or "gemm" for M rows under the user's `kernel` choice (before the device has
    its say: record_linear runs the GEMM where no GEMV shape serves M > 1 on the device)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        return "gemv" if m <= GEMV_MAX_ROWS else "gemm"
    return kernel


def gemv_shape(dev: Device, n: int, k: int, m: int, kernel: str = "auto",
               gemv_config: GemvConfig | None = None,
               gemv_subgroup: bool | None = None) -> GemvConfig | None:
    """The GEMV workgroup shape that runs M rows of (N, K) on `dev`, or None where the GEMM
    runs instead (route() says "gemm", or M > 1 and the device has no GEMV shape for it)."""
    if route(m, kernel) != "gemv":
        return None
    sub = dev.caps.subgroup_shuffle if gemv_subgroup is None else gemv_subgroup
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


# ----------------------------------------------------------------------------- dispatch
def record_linear(b: CommandBatch, w: Q4gswWeight, x: Buffer, y: Buffer, m: int,
                  bias: Buffer | None = None, *, kernel: str = "auto",
                  gemv_config: GemvConfig | None = None, gemv_subgroup: bool | None = None,
                  gemm_tile: str | None = None, gemm_splits: int | None = None,
                  scratch: Buffer | None = None) -> list[Buffer]:
    """Record `y[:m*N] = x[:m*K] @ dequant(w).T (+ bias)` into a batch (buffers already sized).

    The internal entry point under `linear`: tests use it with guard regions around x and y,
    and to force GEMV workgroup shapes (`gemv_config`) or its shared-memory-only reduction
    (`gemv_subgroup=False`, default: only where the device lacks subgroup shuffles), a GEMM tile
    (`gemm_tile`, e.g. "64x64") or a split-K count (`gemm_splits`).
    Split-K needs `splits * m * N` floats of scratch: pass `scratch`, or the buffer is made
    here and returned; the caller closes returned buffers once the batch has run.
    """
    dev = b.device
    n, k = w.shape
    sub = dev.caps.subgroup_shuffle if gemv_subgroup is None else gemv_subgroup
    cfg = gemv_shape(dev, n, k, m, kernel, gemv_config, sub)
    bias_buf = bias if bias is not None else _dummy(dev)
    bufs = {"t_out": y, "t_x": x, "t_weight": w.weight, "t_scales": w.scales, "t_bias": bias_buf}
    if w.has_zeros:
        bufs["t_zeros"] = w.zeros
    if k >= 1 << 31:  # both shaders build their nibble-to-float exponent from pc.k >> 31
        raise ValueError(f"the q4gsw kernels support K < 2^31, got K = {k}")
    if cfg is not None:
        name = gemv_variant(w.has_zeros, w.group_size, cfg, subgroup=sub, half_params=w.half_params)
        units = w.group_size // (32 if gemv_group_mode(w.group_size) == "word" else 8)
        kern = dev.kernel(name, GROUP_UNITS=units)
        gx, gy, _ = grid_2d(ceil_div(n, cfg.rows), dev.caps.max_workgroup_count[0])
        blocks = ceil_div(m, cfg.mr)  # gl_WorkGroupID.z: a block of mr rows of x
        if blocks > dev.caps.max_workgroup_count[2]:
            raise ValueError(f"M = {m} needs {blocks} GEMV row blocks, over this device's "
                             f"{dev.caps.max_workgroup_count[2]}; use kernel='gemm' or 'auto'")
        push = {"n": n, "k": k, "n_groups": w.n_groups, "has_bias": int(bias is not None)}
        if cfg.mr > 1:
            push["m"] = m
        b.dispatch(kern, (gx, gy, blocks), buffers=bufs, push=push)
        return []
    plan = plan_gemm(m, n, k, w.has_zeros, gemm_tile, gemm_splits, w.half_params)
    if plan.float32_params:
        bufs["t_scales"], zeros = w.float32_params()
        if zeros is not None:
            bufs["t_zeros"] = zeros
    kern = dev.kernel(plan.variant, GROUP_COMPS=w.group_size // 8)
    max_x, max_y = dev.caps.max_workgroup_count[:2]
    gx = ceil_div(n, plan.bn)
    if gx > max_x or plan.splits > dev.caps.max_workgroup_count[2]:
        raise ValueError(f"N = {n} needs {gx} workgroups along x, over this device's {max_x}")
    temps: list[Buffer] = []
    if plan.splits > 1:
        need = 4 * plan.splits * m * n
        if scratch is None or scratch.nbytes < need:
            scratch = dev.buffer(need)
            temps.append(scratch)
        bufs = dict(bufs, t_out=scratch)
    rows_per_dispatch = max_y * plan.bm
    for row0 in range(0, m, rows_per_dispatch):
        rows = min(rows_per_dispatch, m - row0)
        b.dispatch(kern, (gx, ceil_div(rows, plan.bm), plan.splits), buffers=bufs,
                   push={"m": m, "n": n, "k": k, "n_groups": w.n_groups,
                         "has_bias": int(bias is not None and plan.splits == 1),
                         "row_offset": row0, "split_chunks": plan.split_chunks})
    if plan.splits > 1:
        b.dispatch(dev.kernel("q4gsw_gemm_reduce"),
                   grid_2d(ceil_div(m * n, 256), max_x),
                   buffers={"t_out": y, "t_part": scratch, "t_bias": bias_buf},
                   push={"mn": m * n, "n": n, "splits": plan.splits,
                         "has_bias": int(bias is not None)})
    return temps


#: Split-K aims for at least this many GEMM workgroups (4 per SM on a 132-SM H100): at small
#: M the tiled GEMM has few output tiles, and each one walking all of K one 32-wide chunk at
#: a time is latency-bound (~1 µs per chunk measured at M=2..32). Measured (H100, K=4096):
#: M=32 N=4096 148 -> 67 µs (9 splits), M=128 N=4096 198 -> 177 µs (5), M=128 N=14336
#: 676 -> 591 µs (2), M=512 unchanged within 1 %.
SPLIT_TARGET_WORKGROUPS = 528
#: ... while every split keeps at least this many 32-wide chunks of K. The count is then
#: rounded to a power of two (nearest on a log scale), which splits the usual K into equal
#: slices: 9 splits of K = 4096 give eight slices of 15 chunks and one of 8, 3 give 672
#: workgroups where 4 give 896. H100 scratch run (K=4096, µs, old count -> power of two):
#:   N=4096:  M=32 s9 66.8 -> s8 60.4, M=64 s9 99.1 -> s8 95.1, M=128 s9 157.4 -> s8 152.6
#:            (s4 141.8), M=512 s3 540.8 -> s4 549.3 (s1 522.7)
#:   N=14336: M=32 s3 222.9 -> s4 194.3, M=64 s3 339.2 -> s4 304.0, M=128 s3 545.4 -> s4
#:            523.1 (s6 509.8), M=512 s1 1831.2 unchanged
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
        return [self.variant] + (["q4gsw_gemm_reduce"] if self.splits > 1 else [])


def plan_gemm(m: int, n: int, k: int, asym: bool, tile: str | None = None,
              splits: int | None = None, half_params: bool = False) -> GemmPlan:
    """Tile and split-K for an M x N x K GEMM."""
    tile = tile or next(t for max_m, t in GEMM_TILES if m <= max_m)
    widen = half_params and tile in GEMM_WIDEN_TILES
    variant = gemm_variant(asym, m, tile, half_params and not widen)
    bm, bn = (int(v) for v in tile.split("x"))
    kb = ceil_div(k, 32)
    if splits is None:
        tiles = ceil_div(m, bm) * ceil_div(n, bn)
        want = ceil_div(SPLIT_TARGET_WORKGROUPS, tiles)
        splits = max(1, min(1 << round(math.log2(want)), kb // SPLIT_MIN_CHUNKS))
    splits = max(1, min(int(splits), kb))
    chunks = ceil_div(kb, splits)
    return GemmPlan(variant, bm, bn, ceil_div(kb, chunks), chunks, widen)


_DUMMIES: "weakref.WeakKeyDictionary[Device, Buffer]" = weakref.WeakKeyDictionary()


def _dummy(dev: Device) -> Buffer:
    """A 16-byte buffer bound where an optional input (bias) is absent; never read then."""
    buf = _DUMMIES.get(dev)
    if buf is None or buf.closed:
        buf = _DUMMIES[dev] = dev.buffer(16)
    return buf


def linear(x: np.ndarray | DeviceTensor, w: QuantizedWeight | Q4gswWeight,
           bias: np.ndarray | None = None, *, kernel: str = "auto",
           device: Device | None = None) -> np.ndarray | DeviceTensor:
    """`y = x @ dequant(w).T + bias` for int4 group-wise weights `w` [N, K].

    Args:
        x: float array [..., K] (float16/64 are converted to float32), or a "dense" float32
            DeviceTensor (the result then stays on the device as a DeviceTensor).
        w: a QuantizedWeight with bits=4 (packed and uploaded once, then cached on it), or a
            Q4gswWeight from prepack_q4gsw.
        bias: optional finite float [N].
        kernel: "auto" (GEMV for M == 1, else GEMM), "gemv" (M == 1 only) or "gemm".
    Returns:
        float32 [..., N] (numpy, or DeviceTensor for a DeviceTensor input).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    on_device = isinstance(x, DeviceTensor)
    if on_device:
        if x.format != DENSE or x.dtype != np.float32:
            msg = wrong_device_input(x, "int4 weight-only linear takes float32 activations",
                                     "vkq.to_device(x_float32)")
            raise (TypeError if x.format == DENSE else LayoutError)(msg)
        device = device or x.device
        if x.device is not device:
            raise ValueError("x lives on another device than the one asked for")
        shape = x.shape
    else:
        x = float_input("x", x)
        shape = x.shape
    n, k = _weight_shape(w)
    if len(shape) < 1 or shape[-1] != k:
        raise ValueError(f"x must have shape [..., K] with K = {k} (the weight's), got {tuple(shape)}")
    m = int(np.prod(shape[:-1], dtype=np.int64))
    route(m if m else 1, kernel)  # validates the kernel choice before any work
    b32 = bias_vector(bias, n)
    target = device or getattr(w, "device", None) or default_device()  # before packing w
    check_fits(target.caps, [dense_need("float32 output y", (m, n))]
               + ([] if on_device else [dense_need("float32 activations x", (m, k))]))
    pw = _device_weight(w, device)
    device = pw.device
    out_shape = tuple(shape[:-1]) + (n,)
    if on_device:
        y = DeviceTensor.empty(device, DENSE, out_shape, np.float32, {"data": ((m * n,), np.float32)})
        if m:
            _run(device, pw, x.buffer, y.buffer, m, b32, kernel, download=False)
        return y
    if m == 0:
        return np.empty(out_shape, np.float32)
    with device.upload(x) as bx, device.buffer(4 * m * n) as by:
        out = _run(device, pw, bx, by, m, b32, kernel, download=True)
    return out.view(np.float32).reshape(out_shape)


def _run(device: Device, pw: Q4gswWeight, x: Buffer, y: Buffer, m: int, bias: np.ndarray | None,
         kernel: str, download: bool) -> np.ndarray | None:
    temps = [device.upload(bias)] if bias is not None else []
    try:
        with device.batch() as b:
            temps += record_linear(b, pw, x, y, m, temps[0] if temps else None, kernel=kernel)
            d = b.download(y, 4 * m * pw.shape[0]) if download else None
    finally:
        for buf in temps:
            buf.close()
    return d.result() if d is not None else None


def describe_variants(caps: Any) -> dict[str, str]:
    sub = bool(getattr(caps, "subgroup_shuffle", True))
    smem = int(getattr(caps, "max_shared_memory", 1 << 62))
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
        out[f"q4gsw GEMM (M={m})"] = plan_gemm(m, 4096, 4096, False, half_params=True).variant
    return out


# ----------------------------------------------------------------------------- benchmarks
#: SPEC §6 decode shapes (N, K) and the GEMM batch sizes.
GEMV_SHAPES = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))
GEMV_GROUP_SIZES = (32, 128)
GEMM_MS = (32, 128, 512)
#: Small batches (the GEMV with rows of x), timed on every GEMV shape at gs=32; at M = 2 and
#: the last one the GEMM is timed too (kernel="gemm"), which these batches ran before.
BATCH_MS = (2, 4, 8, 16, 24)
GEMM_SHAPES = ((4096, 4096), (14336, 4096))


def random_weight(n: int, k: int, group_size: int, asym: bool, seed: int = 0,
                  half_params: bool = True) -> QuantizedWeight:
    """A random valid int4 weight (no float quantization pass: fast at LLM sizes). Its
    scales/zeros are fp16 numbers, as checkpoints and quantize_weight give, unless
    `half_params` is False (then almost none is an fp16 number)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    g = k // group_size
    scales = rng.uniform(0.5, 1.5, size=(n, g)).astype(np.float32) / 64
    zeros = rng.uniform(-0.1, 0.1, size=(n, g)).astype(np.float32) if asym else None
    if half_params:  # these ranges always fit fp16
        scales, zeros = half_group_params(scales, zeros)
    return QuantizedWeight(q, scales, zeros, bits=4, group_size=group_size)


def _copies(dev: Device, pw: Q4gswWeight, count: int) -> list[Q4gswWeight]:
    """`count` distinct device copies of a packed weight (GPU copies, no host traffic), so
    timed calls can rotate through them L2-cold (SPEC §6)."""
    out = [pw]
    for _ in range(count - 1):
        bufs = [dev.buffer(b.nbytes) if b is not None else None
                for b in (pw.weight, pw.scales, pw.zeros)]
        with dev.batch() as b:
            for src, dst in zip((pw.weight, pw.scales, pw.zeros), bufs):
                if src is not None:
                    b.copy(src, dst)
        out.append(Q4gswWeight(dev, pw.shape, pw.group_size, *bufs, param_dtype=pw.param_dtype))
    return out


class _Problem:
    """Device buffers for timing one (M, N, K, group size) problem, L2-cold."""

    def __init__(self, ctx: BenchContext, m: int, n: int, k: int, gs: int, asym: bool = False,
                 half_params: bool = True):
        dev = ctx.device
        self.m, self.n, self.k, self.gs = m, n, k, gs
        self.qw = random_weight(n, k, gs, asym, half_params=half_params)
        base = prepack_quantized(self.qw, dev)
        self.weights = _copies(dev, base, copies_for_l2_cold(base.nbytes, ctx.l2_bytes))
        self.x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        self.bx = dev.upload(self.x)
        self.by = dev.buffer(4 * m * n)
        self.bytes = base.nbytes + 4 * m * k + 4 * m * n
        self.scratch: Buffer | None = None

    def time(self, ctx: BenchContext, **choice: Any) -> Timing:
        """Chained and isolated time of one call; `choice` goes to record_linear (kernel,
        gemv_config, ...)."""
        scratch = self._scratch(ctx, choice)

        def record(b: CommandBatch, i: int) -> None:
            record_linear(b, self.weights[i], self.bx, self.by, self.m, scratch=scratch, **choice)
        return time_call(ctx.device, record, len(self.weights), ctx.repeats)

    def variant(self, ctx: BenchContext, **choice: Any) -> str:
        with ctx.device.batch() as b:
            record_linear(b, self.weights[0], self.bx, self.by, self.m,
                          scratch=self._scratch(ctx, choice), **choice)
            d = b.download(self.by)
        self.check(d.result().view(np.float32).reshape(self.m, self.n))
        return b.kernel_names[0]

    def _scratch(self, ctx: BenchContext, choice: dict[str, Any]) -> Buffer | None:
        """Split-K scratch for this problem, made once (outside the timed batch)."""
        if gemv_shape(ctx.device, self.n, self.k, self.m, choice.get("kernel", "auto"),
                      choice.get("gemv_config"), choice.get("gemv_subgroup")) is not None:
            return None
        plan = plan_gemm(self.m, self.n, self.k, self.qw.zeros is not None,
                         choice.get("gemm_tile"), choice.get("gemm_splits"),
                         self.weights[0].half_params)
        need = 4 * plan.splits * self.m * self.n
        if plan.splits > 1 and (self.scratch is None or self.scratch.nbytes < need):
            if self.scratch is not None:
                self.scratch.close()
            self.scratch = ctx.device.buffer(need)
        return self.scratch

    def check(self, y: np.ndarray) -> None:
        """Guard against timing a wrong kernel: compare a few channels with the reference."""
        from vkq.reference.q4gsw import q4gsw_dequantize_reference, q4gsw_linear_reference
        cols = np.unique(np.linspace(0, self.n - 1, 16).astype(int))
        z = None if self.qw.zeros is None else self.qw.zeros[cols]
        ref = q4gsw_linear_reference(self.x, self.qw.q[cols], self.qw.scales[cols], z, self.gs)
        w = q4gsw_dequantize_reference(self.qw.q[cols], self.qw.scales[cols], z, self.gs)
        scale = np.abs(self.x.astype(np.float64)) @ np.abs(w).T
        if not np.all(np.abs(y[:, cols] - ref) <= 1e-5 * scale + 1e-6):
            raise AssertionError(f"q4gsw bench: wrong result at M={self.m} N={self.n} K={self.k}")

    def close(self) -> None:
        for w in self.weights:
            w.close()
        for buf in (self.bx, self.by, self.scratch):
            if buf is not None:
                buf.close()


def _shape(m: int, n: int, k: int, gs: int | None = None) -> str:
    return f"M={m} N={n} K={k}" + (f" gs={gs}" if gs else "")


@register("q4gsw_linear")
def bench_q4gsw_linear(ctx: BenchContext) -> Iterator[Row]:
    quick = ctx.quick
    gemv_shapes = ((1024, 512), (256, 1024)) if quick else GEMV_SHAPES
    gemm_shapes = ((256, 512),) if quick else GEMM_SHAPES
    gemm_ms = (4, 33) if quick else GEMM_MS
    peer = _TorchPeer(ctx) if "torch" in ctx.compare else None
    for gs in GEMV_GROUP_SIZES:
        for n, k in gemv_shapes:
            # fp16 parameters (what checkpoints and quantize_weight give) unless noted; at the
            # first group size, symmetric float32 parameters too, for comparison.
            first = gs == GEMV_GROUP_SIZES[0]
            kinds = ((False, True), (True, True), (False, False)) if first else ((False, True),)
            floor_bytes = 0
            for asym, half in kinds:
                p = _Problem(ctx, 1, n, k, gs, asym, half_params=half)
                try:
                    name = p.variant(ctx)
                    note = ("asymmetric " if asym else "") + ("" if half else "float32 params ")
                    yield Row.timed("q4gsw_linear", _shape(1, n, k, gs), name, p.time(ctx),
                                    bytes=p.bytes, note=note + "L2-cold")
                    floor_bytes = floor_bytes or p.bytes
                finally:
                    p.close()
            if first:
                yield _read_floor_row(ctx, 1, n, k, gs, floor_bytes)
            if peer is not None:
                yield from peer.rows(1, n, k, gs, fp16=(gs == GEMV_GROUP_SIZES[0]))
    batch_ms = (2, 5) if quick else BATCH_MS
    for n, k in gemv_shapes:
        for m in batch_ms:
            p = _Problem(ctx, m, n, k, 32)
            try:
                for kernel in ("auto", "gemm") if m in (batch_ms[0], batch_ms[-1]) else ("auto",):
                    name = p.variant(ctx, kernel=kernel)
                    note = "L2-cold" + (", GEMM forced" if kernel == "gemm" else "")
                    yield Row.timed("q4gsw_linear", _shape(m, n, k, 32), name,
                                    p.time(ctx, kernel=kernel), bytes=p.bytes,
                                    ops=2.0 * m * n * k, note=note)
            finally:
                p.close()
            if peer is not None:
                yield from peer.rows(m, n, k, 32, fp16=False)
    for n, k in gemm_shapes:
        for m in gemm_ms:
            p = _Problem(ctx, m, n, k, 32)
            try:
                name = p.variant(ctx)
                yield Row.timed("q4gsw_linear", _shape(m, n, k, 32), name, p.time(ctx),
                                bytes=p.bytes, ops=2.0 * m * n * k,
                                note="TOPS = effective fp32 TFLOP/s")
            finally:
                p.close()
            if peer is not None:
                yield from peer.rows(m, n, k, 32, fp16=True)


def _read_floor_row(ctx: BenchContext, m: int, n: int, k: int, gs: int, nbytes: int) -> Row:
    """The read_bandwidth kernel streaming the GEMV's byte count (`nbytes`, rounded down to
    16), one dispatch per L2-cold copy, timed like the GEMV: what any single kernel moving
    those bytes can reach (launch and drain included), next to the 1 GiB roofline."""
    dev = ctx.device
    nbytes = nbytes // 16 * 16
    copies = copies_for_l2_cold(nbytes, ctx.l2_bytes)
    kern = dev.kernel("read_bandwidth")
    n_words = nbytes // 16
    groups = min(ceil_div(n_words, 1024), dev.caps.max_workgroup_count[0])
    bufs = [dev.buffer(nbytes) for _ in range(copies)]
    sink = dev.buffer(16 * 256)
    try:
        def record(b: CommandBatch, i: int) -> None:
            b.dispatch(kern, (groups, 1, 1), buffers={"t_sink": sink, "t_data": bufs[i]},
                       push={"n_words": n_words, "magic": 0x9E3779B9, "first_word": 0})
        timing = time_call(dev, record, copies, ctx.repeats)
    finally:
        for buf in bufs + [sink]:
            buf.close()
    return Row.timed("q4gsw_linear", _shape(m, n, k, gs), "read_bandwidth (same bytes)", timing,
                     bytes=nbytes, note="floor: one streaming read of the GEMV's bytes, L2-cold")


class _TorchPeer:
    """PyTorch on the same GPU: int4 `_weight_int4pack_mm` and fp16 `F.linear`, timed with CUDA
    events over L2-cold weight copies (vkq.bench.torch_peer)."""

    INNER_K_TILES = 8

    def __init__(self, ctx: BenchContext):
        from vkq.bench.torch_peer import cuda_torch
        self.ctx = ctx
        self.torch = cuda_torch()
        if self.torch is None:
            ctx.progress("torch with CUDA not available: no peer rows")

    def rows(self, m: int, n: int, k: int, gs: int, fp16: bool) -> Iterator[Row]:
        if self.torch is None:
            return
        yield self._int4_row(m, n, k, gs)
        if fp16:
            yield self._fp16_row(m, n, k)

    def _int4_pack(self, qw: QuantizedWeight) -> tuple[Any, Any]:
        """(packed weight, scales_and_zeros [K/gs, N, 2] bf16) per the torch 2.x CUDA API:
        `_convert_weight_to_int4pack(uint8 [N, K/2] with even k in the high nibble, tiles)`
        (torch >= 2.5); older releases took int32 [N, K] values, tried second."""
        torch = self.torch
        u = (qw.q.astype(np.int32) + 8)
        dev = "cuda"
        packed_u8 = torch.from_numpy(((u[:, ::2] << 4) | u[:, 1::2]).astype(np.uint8)).to(dev)
        try:
            wp = torch.ops.aten._convert_weight_to_int4pack(packed_u8, self.INNER_K_TILES)
        except RuntimeError:
            wp = torch.ops.aten._convert_weight_to_int4pack(torch.from_numpy(u).to(dev),
                                                            self.INNER_K_TILES)
        sz = np.stack([qw.scales.T, qw.zeros.T], axis=2)  # [G, N, 2]: scale, zero
        return wp, torch.from_numpy(np.ascontiguousarray(sz)).to(dev, torch.bfloat16)

    def _int4_row(self, m: int, n: int, k: int, gs: int) -> Row:
        from vkq.bench.torch_peer import time_cuda
        from vkq.reference.q4gsw import q4gsw_linear_reference
        torch = self.torch
        qw = random_weight(n, k, gs, asym=True, seed=2)
        wp, sz = self._int4_pack(qw)
        nbytes = wp.numel() * wp.element_size() + sz.numel() * sz.element_size()
        copies = copies_for_l2_cold(nbytes, self.ctx.l2_bytes)
        ws = [(wp, sz)] + [(wp.clone(), sz.clone()) for _ in range(copies - 1)]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        op = torch.ops.aten._weight_int4pack_mm
        # check the peer computes the same product (bf16 scales/activations: loose bound)
        y = op(x, wp, gs, sz).float().cpu().numpy()
        s_bf = sz.float().cpu().numpy()
        ref = q4gsw_linear_reference(x.float().cpu().numpy(), qw.q, s_bf[:, :, 0].T,
                                     s_bf[:, :, 1].T, gs)
        ok = np.allclose(y, ref, rtol=3e-2, atol=3e-2 * np.abs(ref).max())
        call = lambda i: op(x, ws[i][0], gs, ws[i][1])  # noqa: E731
        ns = time_cuda(call, copies, self.ctx.repeats)
        del ws
        return Row("q4gsw_linear", _shape(m, n, k, gs), "torch _weight_int4pack_mm", ns / 1e3,
                   bytes=nbytes + 2 * m * k + 2 * m * n, ops=2.0 * m * n * k if m > 1 else None,
                   note=f"peer, bf16 x, asymmetric, L2-cold{'' if ok else ', MISMATCH vs reference'}")

    def _fp16_row(self, m: int, n: int, k: int) -> Row:
        from vkq.bench.torch_peer import time_cuda
        torch = self.torch
        w = torch.randn(n, k, device="cuda", dtype=torch.float16)
        copies = copies_for_l2_cold(w.numel() * 2, self.ctx.l2_bytes)
        ws = [w] + [w.clone() for _ in range(copies - 1)]
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        lin = torch.nn.functional.linear
        call = lambda i: lin(x, ws[i])  # noqa: E731
        ns = time_cuda(call, copies, self.ctx.repeats)
        del ws
        return Row("q4gsw_linear", _shape(m, n, k), "torch fp16 F.linear", ns / 1e3,
                   bytes=2 * (n * k + m * k + m * n), ops=2.0 * m * n * k if m > 1 else None,
                   note="peer, L2-cold")


# ----------------------------------------------------------------------------- tuning
def sweep_gemv_configs() -> list[GemvConfig]:
    """Every one-row (M == 1) GEMV workgroup shape declared for symmetric word-group weights."""
    from vkq.shaderlib import declared_variants
    out = []
    for name, (_, p) in sorted(declared_variants().items()):
        if (name.startswith("q4gsw_gemv_sym_word_") and p["SUBGROUP"] and not p.get("P16")
                and p.get("MR", 1) == 1):
            out.append(GemvConfig.from_params(p))
    return out


def tune_gemv(ctx: BenchContext, shapes: tuple[tuple[int, int], ...] = GEMV_SHAPES,
              group_sizes: tuple[int, ...] = GEMV_GROUP_SIZES,
              rounds: int = 3) -> list[tuple[str, str, float]]:
    """Chained µs of every declared GEMV shape on every (N, K, gs): what GEMV_CONFIGS is
    chosen from. The configurations take turns over `rounds` rounds and each keeps its best
    round, so a slow moment of the GPU cannot favour one of them.

    Run on the target GPU: `python -c "from vkq.ops.q4gsw_linear import main_tune; main_tune()"`.
    """
    results = []
    for gs in group_sizes:
        for n, k in shapes:
            p = _Problem(ctx, 1, n, k, gs)
            try:
                configs = sweep_gemv_configs()
                for cfg in configs:
                    p.variant(ctx, gemv_config=cfg)  # checked against the reference once
                best: dict[GemvConfig, float] = {}
                for _ in range(rounds):
                    for cfg in configs:
                        us = p.time(ctx, gemv_config=cfg).chain_ns / 1e3
                        best[cfg] = min(us, best.get(cfg, us))
                for cfg, us in best.items():
                    results.append((_shape(1, n, k, gs), cfg.tag, us))
                ctx.progress(f"{_shape(1, n, k, gs)} done")
            finally:
                p.close()
    return results


def tune_gemm(ctx: BenchContext, ms: tuple[int, ...] = (2, 8, 16, 32, 128, 512),
              shapes: tuple[tuple[int, int], ...] = GEMM_SHAPES) -> list[tuple[str, str, float]]:
    """Time every declared symmetric GEMM tile at each M: what GEMM_TILES is chosen from."""
    from vkq.shaderlib import declared_variants
    tiles = sorted(n.split("_")[-1] for n in declared_variants() if n.startswith("q4gsw_gemm_sym_"))
    results = []
    for n, k in shapes:
        for m in ms:
            p = _Problem(ctx, m, n, k, 32)
            try:
                for tile in tiles:
                    for splits in (1, None):  # None: the split-K heuristic
                        auto = plan_gemm(m, n, k, False, tile).splits
                        if splits is None and auto == 1:
                            continue
                        p.variant(ctx, gemm_tile=tile, gemm_splits=splits)
                        us = p.time(ctx, gemm_tile=tile, gemm_splits=splits).chain_ns / 1e3
                        results.append((_shape(m, n, k, 32), f"{tile}/s{splits or auto}", us))
                        ctx.progress(f"{results[-1]} {2e-6 * m * n * k / us:.2f} TFLOP/s")
            finally:
                p.close()
    return results


def main_tune() -> None:
    """Print GEMV and GEMM tuning tables for the default device, best first per problem."""
    import sys
    dev = default_device()
    ctx = BenchContext(device=dev, roofline_gbps=0.0, quick=False, repeats=15,
                       progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    for title, res in (("GEMV", tune_gemv(ctx)), ("GEMM", tune_gemm(ctx))):
        print(f"== {title} tuning on {dev.caps.name}")
        by_problem: dict[str, list[tuple[float, str]]] = {}
        for prob, tag, us in res:
            by_problem.setdefault(prob, []).append((us, tag))
        for prob, lst in by_problem.items():
            lst.sort()
            print(f"{prob}: " + "  ".join(f"{tag} {us:.2f}" for us, tag in lst))
