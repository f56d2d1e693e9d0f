"""Tensor-core peak: the `coopmat_peak` microkernels (fp16 -> fp32 at 16x16x16, int8 ->
int32 at 16x16x32: the shapes the coopmat GEMMs use), no memory traffic. The q4gsw_linear
and q8ta_linear suites report their coopmat rows as a fraction of these (`peak_tops`),
measured in the same run (`ctx.cache["coopmat_peak_tops"]`); devices without cooperative
matrices get no rows.

Then the `coopmat_loop_peak` rows: each GEMM tile's main loop with global memory taken out
(shared-memory fill from registers, fragment loads, MMAs, barriers), with and without the
fill's stores: the ceiling a GEMM with that tile can reach, as a fraction of the peak."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.timing import time_dispatches
from vkq.ops.common import fits_shared
from vkq.runtime import CommandBatch, Device
from vkq.shaderlib import families, variant_name

#: name -> (the coopmat_peak TYPE, the device shape it needs (M, N, K, A, C)).
KINDS = {"f16": (16, 16, 16, "float16", "float32"), "i8": (16, 16, 32, "sint8", "sint32")}


def measure_coopmat_peak(device: Device, kind: str, quick: bool, repeats: int) -> tuple[float, float]:
    """(ns, ops) of one `coopmat_peak_<kind>` dispatch (2 ops per multiply-add)."""
    kernel = device.kernel(variant_name("coopmat_peak", TYPE=kind))
    p = kernel.info.params
    groups, iters = (4, 2) if quick else (2112, 256)
    subgroups = groups * p["WG"] // device.caps.subgroup_size
    ops = subgroups * iters * p["UNROLL"] * p["CHAINS"] * 2 * p["M"] * p["N"] * p["K"]
    src = np.random.default_rng(0).integers(0, 3, 16384, dtype=np.uint8)  # small values: fp16 and int8
    if kind == "f16":
        src = src.astype(np.float16).view(np.uint8)[:16384]
    with device.buffer(256 * 4) as sink, device.upload(src) as operands:
        def rec(b: CommandBatch, i: int) -> None:
            b.dispatch(kernel, (groups, 1, 1), buffers={"t_sink": sink, "t_src": operands},
                       push={"iters": iters, "seed": 5 + i, "magic": 0x7F7FFFFF, "one": 1.0})
        ns = time_dispatches(device, rec, 1, max(3, repeats // 4))
    return ns, float(ops)


def coopmat_peaks(ctx: BenchContext) -> dict[str, float]:
    """TOPS by kind ("f16", "i8") for the kinds the device has, measured once per run."""
    peaks = ctx.cache.get("coopmat_peak_tops")
    if peaks is None:
        peaks = ctx.cache["coopmat_peak_tops"] = {}
        caps = ctx.device.caps
        for kind, shape in KINDS.items():
            if caps.subgroup_size == 32 and caps.has_coopmat(*shape):
                ns, ops = measure_coopmat_peak(ctx.device, kind, ctx.quick, ctx.repeats)
                peaks[kind] = ops / ns / 1e3
                ctx.cache[f"coopmat_peak_ns_{kind}"] = (ns, ops)
    return peaks


@register("coopmat_peak")
def bench_coopmat_peak(ctx: BenchContext) -> Iterator[Row]:
    for kind, tops in coopmat_peaks(ctx).items():
        ns, ops = ctx.cache[f"coopmat_peak_ns_{kind}"]
        yield Row("coopmat_peak", "x".join(map(str, KINDS[kind][:3])),
                  variant_name("coopmat_peak", TYPE=kind), ns / 1e3, ops=ops, peak_tops=tops,
                  note=f"{KINDS[kind][3]} -> {KINDS[kind][4]}, 8 independent accumulators per subgroup")
    yield from loop_peak_rows(ctx)


def measure_loop_peak(device: Device, variant: str, quick: bool, repeats: int) -> tuple[float, float]:
    """(ns, ops) of one `coopmat_loop_peak` dispatch: enough workgroups for several per SM."""
    kernel = device.kernel(variant)
    p = kernel.info.params
    fk = 16 if p["TYPE"] == "f16" else 32
    groups, steps = (2, 3) if quick else (1056, 512)
    subgroups = p["WM"] * p["WN"]
    frags = (p["BM"] // p["WM"] // 16) * (p["BN"] // p["WN"] // 16) * p.get("KD", 2)
    ops = groups * subgroups * steps * frags * 2 * 16 * 16 * fk
    with device.buffer(256 * 4) as sink:
        def rec(b: CommandBatch, i: int) -> None:
            b.dispatch(kernel, (groups, 1, 1), buffers={"t_sink": sink},
                       push={"steps": steps, "magic": 0x7F7FFFFF})
        ns = time_dispatches(device, rec, 1, max(3, repeats // 4))
    return ns, float(ops)


def loop_peak_rows(ctx: BenchContext) -> Iterator[Row]:
    """A row per `coopmat_loop_peak` variant the device runs, as a fraction of its peak."""
    peaks = coopmat_peaks(ctx)
    for v in families()["coopmat_loop_peak"].variants:
        kind = v.params["TYPE"]
        if kind not in peaks or not fits_shared(v.name, ctx.device.caps.max_shared_memory):
            continue
        ns, ops = measure_loop_peak(ctx.device, v.name, ctx.quick, ctx.repeats)
        yield Row("coopmat_peak", f"loop {v.values['TILE']}", v.name, ns / 1e3, ops=ops,
                  peak_tops=peaks[kind],
                  note="GEMM main loop, no global memory" + ("" if v.params["STORE"] else ", no fill stores"))
