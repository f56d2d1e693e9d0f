"""q8ta_linear benchmark: the integer-dot peak microkernel, the GEMV at decode shapes and
the GEMM at prefill batches, weights L2-cold; `--compare torch` adds fp16 cuBLAS GEMVs and
`torch._int_mm`. On int8 tensor cores the GEMM rows are the coopmat GEMM (TOPS against the
measured int8 coopmat peak), each next to the int-dot GEMM forced."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.suites.coopmat_peak import coopmat_peaks
from vkq.bench.timing import copies_for_l2_cold, time_call, time_dispatches
from vkq.ops.q8ta_linear import (COOPMAT_FAMILY, GEMM, GEMV, PackedWeight, QParams, output_spec,
                                 pack_x, pick_variant, record)
from vkq.quantized_weight import QuantizedWeight
from vkq.runtime import CommandBatch, Device
from vkq.shaderlib import variant_name

def peak_variant(int_dot: bool) -> str:
    """The int_dot_peak microkernel with the integer-dot instruction or its int32 fallback."""
    return variant_name("int_dot_peak", INT_DOT=int_dot)


def measure_int_dot_peak(device: Device, int_dot: bool, quick: bool,
                         repeats: int) -> tuple[float, float]:
    """(ns, ops) of one `int_dot_peak` dispatch (8 ops per 4x8-bit dot): the device's
    integer-dot throughput."""
    kernel = device.kernel(peak_variant(int_dot))
    p = kernel.info.params
    groups, iters = (16, 4) if quick else (8192, 64)
    ops = groups * p["WG"] * iters * p["UNROLL"] * p["CHAINS"] * 8
    with device.buffer(256 * 4) as sink:
        def rec(b: CommandBatch, i: int) -> None:
            b.dispatch(kernel, (groups, 1, 1), buffers={"t_sink": sink},
                       push={"iters": iters, "seed": 12345 + i, "magic": 0x13579BDF})
        ns = time_dispatches(device, rec, 1, max(3, repeats // 4))
    return ns, float(ops)


def _rand_int8(rng: np.random.Generator, shape: tuple[int, ...], lo: int = -128) -> np.ndarray:
    return rng.integers(lo, 128, size=shape, dtype=np.int8)


def _bench_case(ctx: BenchContext, path: str, m: int, n: int, k: int,
                peak: float | None, variant: str | None = None) -> Row:
    dev = ctx.device
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    w = QuantizedWeight(_rand_int8(rng, (n, k), -127), rng.uniform(0.001, 0.01, n).astype(np.float32), bits=8)
    qp = QParams(0.05, 3, 0.5, -2, False)
    weight = PackedWeight(dev, w)
    packed_x = pack_x(path, _rand_int8(rng, (m, k)))
    out_bytes = int(np.prod(output_spec(path, m, n))) * 4
    copies = copies_for_l2_cold(weight.weight_bytes, ctx.l2_bytes)
    variant = variant or pick_variant(path, dev.caps, m, n, k)
    extra = [dev.buffer(weight.data.nbytes) for _ in range(copies - 1)]
    try:
        with dev.batch() as b:  # distinct copies of the same blocks, filled on the device
            for dst in extra:
                b.copy(weight.data, dst)
        bufs = [weight.data, *extra]
        epilogue = weight.epilogue(qp, None)
        with dev.upload(packed_x.arrays["data"]) as bx, dev.buffer(out_bytes) as by:
            def rec(b: CommandBatch, i: int) -> None:
                record(b, variant, x=bx, out=by, weight=weight, weight_data=bufs[i],
                       epilogue=epilogue, m=m, qp=qp)
            timing = time_call(dev, rec, copies, ctx.repeats)
    finally:
        for buf in extra:
            buf.close()
        weight.close()
    moved = weight.weight_bytes + 32 * weight.n4 + packed_x.nbytes + out_bytes
    coop = variant.startswith(COOPMAT_FAMILY)
    return Row.timed("q8ta_linear", f"M={m} N={n} K={k}", variant, timing, bytes=moved,
                     ops=2.0 * m * n * k, peak_tops=peak if path == GEMM else None,
                     note=f"L2-cold ({copies} weight copies)"
                     + (", int8 tensor cores, TOPS vs the coopmat int8 peak" if coop else ""))


def _torch_rows(ctx: BenchContext, gemv_shapes: list[tuple[int, int]],
                gemm_cases: list[tuple[int, int, int]], peak: float | None) -> Iterator[Row]:
    from vkq.bench.torch_peer import cuda_torch, time_cuda
    torch = cuda_torch()
    if torch is None:
        yield Row("q8ta_linear", "-", "torch", 0.0, note="--compare torch: no CUDA torch here")
        return
    dev = "cuda"
    for n, k in gemv_shapes:  # no int8 GEMV in torch (_int_mm needs M > 16): fp16 cuBLAS GEMV
        copies = copies_for_l2_cold(2 * n * k, ctx.l2_bytes)
        ws = [torch.randn(n, k, device=dev, dtype=torch.float16) for _ in range(copies)]
        x = torch.randn(1, k, device=dev, dtype=torch.float16)
        call = lambda i: torch.nn.functional.linear(x, ws[i])  # noqa: E731
        ns = time_cuda(call, copies, ctx.repeats)
        yield Row("q8ta_linear", f"M=1 N={n} K={k}", "torch fp16 linear", ns / 1e3,
                  bytes=2 * n * k + 2 * k + 2 * n, note="peer: fp16 weights (2x the bytes)")
        del ws
    for m, n, k in gemm_cases:
        copies = copies_for_l2_cold(n * k, ctx.l2_bytes)
        ws = [torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8) for _ in range(copies)]
        a = torch.randint(-128, 128, (m, k), device=dev, dtype=torch.int8)
        call = lambda i: torch._int_mm(a, ws[i].t())  # noqa: E731
        ns = time_cuda(call, copies, ctx.repeats)
        yield Row("q8ta_linear", f"M={m} N={n} K={k}", "torch._int_mm", ns / 1e3,
                  bytes=n * k + m * k + 4 * m * n, ops=2.0 * m * n * k, peak_tops=peak,
                  note="peer: int8 tensor cores, int32 output, no epilogue")
        del ws


@register("q8ta_linear")
def bench_q8ta_linear(ctx: BenchContext) -> Iterator[Row]:
    dev = ctx.device
    peaks: dict[bool, float] = {}
    for int_dot in (True, False):
        if int_dot and not dev.caps.integer_dot_product:
            continue
        ns, ops = measure_int_dot_peak(dev, int_dot, ctx.quick, ctx.repeats)
        tops = peaks[int_dot] = ops / ns / 1e3
        yield Row("q8ta_linear", "int-dot peak", peak_variant(int_dot), ns / 1e3, ops=ops,
                  peak_tops=tops, note="independent dot chains" if int_dot else
                  "independent dot chains, int32 emulation")
    peak = peaks.get(dev.caps.integer_dot_product, peaks[False])
    ctx.cache["int_dot_peak_tops"] = peak
    if ctx.quick:
        gemv_shapes, gemm_cases = [(256, 1024), (100, 512)], [(m, 256, 512) for m in (4, 32)]
    else:
        gemv_shapes = [(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096)]
        gemm_cases = [(m, n, 4096) for n in (4096, 14336) for m in (32, 128, 512, 2048)]
    gemv_shapes = gemv_shapes if ctx.wants_m(1) else []
    gemm_cases = [c for c in gemm_cases if ctx.wants_m(c[0])]
    for n, k in gemv_shapes:
        yield _bench_case(ctx, GEMV, 1, n, k, peak)
    tc_peak = coopmat_peaks(ctx).get("i8")
    for m, n, k in gemm_cases:
        routed = pick_variant(GEMM, dev.caps, m, n, k)
        if routed.startswith(COOPMAT_FAMILY):
            yield _bench_case(ctx, GEMM, m, n, k, tc_peak)
            yield _bench_case(ctx, GEMM, m, n, k, peak, pick_variant(GEMM, dev.caps, m, n, k, coopmat=False))
        else:
            yield _bench_case(ctx, GEMM, m, n, k, peak)
    if "torch" in ctx.compare:
        yield from _torch_rows(ctx, gemv_shapes, gemm_cases, peak)
