"""q4gsw_linear benchmark and tuning sweeps.

The suite times the GEMV at the decode shapes (both group sizes, symmetric/asymmetric, fp16 and
float32 parameters) next to a streaming read of the same bytes, small batches (the GEMV with
rows of x, and the GEMM they ran before) and the GEMM at prefill batches, weights L2-cold;
`--compare torch` adds `_weight_int4pack_mm` and fp16 `F.linear` peers. On tensor cores the
prefill rows are the coopmat GEMM (TOPS against the measured fp16 coopmat peak), each next to
the fp32 GEMM forced. `tune_gemv` / `tune_gemm` / `tune_coopmat` time every declared shape:
what the op's routing tables are chosen from (`python -m vkq.bench.suites.q4gsw_linear` on
the target GPU prints them).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.suites.coopmat_peak import coopmat_peaks
from vkq.bench.roofline import read_variant
from vkq.bench.timing import Timing, copies_for_l2_cold, time_call
from vkq.ops.common import ceil_div
from vkq.ops.q4gsw_linear import (GemvConfig, Q4gswWeight, coopmat_capable, plan_coopmat, plan_gemm,
                                  prepack_quantized, record_linear, scratch_needs)
from vkq.quantized_weight import QuantizedWeight, half_group_params
from vkq.runtime import Buffer, CommandBatch, default_device
from vkq.shaderlib import families

#: docs/design.md §6 decode shapes (N, K) and the GEMM batch sizes.
GEMV_SHAPES = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))
GEMV_GROUP_SIZES = (32, 128)
GEMM_MS = (32, 128, 512, 2048)
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


def _copies(pw: Q4gswWeight, count: int) -> list[Q4gswWeight]:
    """`count` distinct device copies of a packed weight (the first is `pw`), so timed calls
    can rotate through them L2-cold (docs/design.md §6)."""
    return [pw] + [pw.copy() for _ in range(count - 1)]


class _Problem:
    """Device buffers for timing one (M, N, K, group size) problem, L2-cold."""

    def __init__(self, ctx: BenchContext, m: int, n: int, k: int, gs: int, asym: bool = False,
                 half_params: bool = True):
        dev = ctx.device
        self.m, self.n, self.k, self.gs = m, n, k, gs
        self.qw = random_weight(n, k, gs, asym, half_params=half_params)
        base = prepack_quantized(self.qw, dev)
        self.weights = _copies(base, copies_for_l2_cold(base.nbytes, ctx.l2_bytes))
        self.x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        self.bx = dev.upload(self.x)
        self.by = dev.buffer(4 * m * n)
        self.bytes = base.nbytes + 4 * m * k + 4 * m * n
        self.scratch: dict[str, Buffer] = {}

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
        fp16 = any(name.startswith("q4gsw_coopmat_") for name in b.kernel_names)
        self.check(d.result().view(np.float32).reshape(self.m, self.n), fp16)
        return next((n for n in b.kernel_names if n.startswith("q4gsw_coopmat_") and "prep" not in n),
                    b.kernel_names[0])

    def _scratch(self, ctx: BenchContext, choice: dict[str, Any]) -> dict[str, Buffer]:
        """Scratch for this problem (split-K partials, the coopmat GEMM's fp16 x), made once
        per size (outside the timed batch)."""
        for role, nbytes in scratch_needs(ctx.device, self.weights[0], self.m, **choice).items():
            buf = self.scratch.get(role)
            if buf is None or buf.nbytes < nbytes:
                if buf is not None:
                    buf.close()
                self.scratch[role] = ctx.device.buffer(nbytes)
        return self.scratch

    def check(self, y: np.ndarray, fp16: bool = False) -> None:
        """Guard against timing a wrong kernel: compare a few channels with the reference
        (`fp16`: within the coopmat GEMM's fp16 rounding, tests/test_q4gsw_linear.py)."""
        from vkq.reference.q4gsw import q4gsw_dequantize_reference, q4gsw_linear_reference
        cols = np.unique(np.linspace(0, self.n - 1, 16).astype(int))
        z = None if self.qw.zeros is None else self.qw.zeros[cols]
        ref = q4gsw_linear_reference(self.x, self.qw.q[cols], self.qw.scales[cols], z, self.gs)
        w = q4gsw_dequantize_reference(self.qw.q[cols], self.qw.scales[cols], z, self.gs)
        scale = np.abs(self.x.astype(np.float64)) @ np.abs(w).T
        rel = 2.0 ** -9 + self.k * 2.0 ** -23 if fp16 else 1e-5
        if not np.all(np.abs(y[:, cols] - ref) <= rel * scale + 1e-6):
            raise AssertionError(f"q4gsw bench: wrong result at M={self.m} N={self.n} K={self.k}")

    def close(self) -> None:
        for w in self.weights:
            w.close()
        for buf in (self.bx, self.by, *self.scratch.values()):
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
    for gs in GEMV_GROUP_SIZES if ctx.wants_m(1) else ():
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
        for m in filter(ctx.wants_m, batch_ms):
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
    tensor_cores = coopmat_capable(ctx.device.caps) is None
    peak = coopmat_peaks(ctx).get("f16") if tensor_cores else None
    for n, k in gemm_shapes:
        for m in filter(ctx.wants_m, gemm_ms):
            p = _Problem(ctx, m, n, k, 32)
            try:
                for kernel in ("auto", "gemm") if tensor_cores else ("auto",):
                    name = p.variant(ctx, kernel=kernel)
                    coop = name.startswith("q4gsw_coopmat_")
                    note = ("fp16 tensor cores (+ fp16 x prep pass), TOPS vs the coopmat fp16 peak"
                            if coop else "TOPS = effective fp32 TFLOP/s"
                            + (", fp32 GEMM forced" if kernel == "gemm" else ""))
                    yield Row.timed("q4gsw_linear", _shape(m, n, k, 32), name,
                                    p.time(ctx, kernel=kernel), bytes=p.bytes, ops=2.0 * m * n * k,
                                    peak_tops=peak if coop else None, note=note)
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
    kern = dev.kernel(read_variant())
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


# ----------------------------------------------------------------------------- tuning sweeps
def sweep_gemv_configs() -> list[GemvConfig]:
    """Every one-row (M == 1) GEMV workgroup shape declared for symmetric word-group weights
    (with subgroup shuffles), in name order."""
    declared = families()["q4gsw_gemv"].select(ASYM=False, GROUP="word", SUBGROUP=True, P16=False, NORM=False)
    configs = (GemvConfig.from_params(v.params) for v in sorted(declared, key=lambda v: v.name))
    return [c for c in configs if c.mr == 1]


def tune_gemv(ctx: BenchContext, shapes: tuple[tuple[int, int], ...] = GEMV_SHAPES,
              group_sizes: tuple[int, ...] = GEMV_GROUP_SIZES,
              rounds: int = 3) -> list[tuple[str, str, float]]:
    """Chained µs of every declared GEMV shape on every (N, K, gs): what GEMV_CONFIGS is
    chosen from. The configurations take turns over `rounds` rounds and each keeps its best
    round, so a slow moment of the GPU cannot favour one of them.

    Run on the target GPU: `python -m vkq.bench.suites.q4gsw_linear`.
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


def _sweep(ctx: BenchContext, ms: tuple[int, ...], shapes: tuple[tuple[int, int], ...],
           choices: Any) -> list[tuple[str, str, float]]:
    """Chained µs of every (tag, choice) that `choices(m, n, k)` yields, on each problem
    (each choice checked against the reference first)."""
    results = []
    for n, k in shapes:
        for m in ms:
            p = _Problem(ctx, m, n, k, 32)
            try:
                for tag, choice in choices(m, n, k):
                    p.variant(ctx, **choice)
                    us = p.time(ctx, **choice).chain_ns / 1e3
                    results.append((_shape(m, n, k, 32), tag, us))
                    ctx.progress(f"{results[-1]} {2e-6 * m * n * k / us:.2f} TFLOP/s")
            finally:
                p.close()
    return results


def tune_gemm(ctx: BenchContext, ms: tuple[int, ...] = (2, 8, 16, 32, 128, 512),
              shapes: tuple[tuple[int, int], ...] = GEMM_SHAPES) -> list[tuple[str, str, float]]:
    """Time every declared symmetric GEMM tile at each M: what GEMM_TILES is chosen from."""
    tiles = sorted({v.values["TILE"] for v in families()["q4gsw_gemm"].select(ASYM=False)})

    def choices(m: int, n: int, k: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for tile in tiles:
            auto = plan_gemm(m, n, k, False, tile).splits
            for splits in (1,) if auto == 1 else (1, None):  # None: the split-K heuristic
                yield f"{tile}/s{splits or auto}", dict(gemm_tile=tile, gemm_splits=splits)
    return _sweep(ctx, ms, shapes, choices)


def tune_coopmat(ctx: BenchContext, ms: tuple[int, ...] = (32, 128, 512, 2048),
                 shapes: tuple[tuple[int, int], ...] = GEMM_SHAPES) -> list[tuple[str, str, float]]:
    """Time every declared symmetric fp16-parameter coopmat tile at each M, without split-K,
    with the heuristic's and with twice that: what coopmat_tile and COOPMAT_SPLIT_TARGET are
    chosen from."""
    tiles = sorted({v.values["TILE"] for v in families()["q4gsw_coopmat"].select(ASYM=False, P16=True)})

    def choices(m: int, n: int, k: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for tile in tiles:
            auto = plan_coopmat(m, n, k, False, tile, half_params=True).splits
            for splits in sorted({1, auto, 2 * auto}):
                yield f"{tile}/s{splits}", dict(kernel="coopmat", coopmat_tile=tile, coopmat_splits=splits)
    return _sweep(ctx, ms, shapes, choices)


def main_tune() -> None:
    """Print GEMV and GEMM (and, on tensor cores, coopmat GEMM) tuning tables for the default
    device, best first per problem."""
    import sys
    dev = default_device()
    ctx = BenchContext(device=dev, roofline_gbps=0.0, quick=False, repeats=15,
                       progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    sweeps = [("GEMV", tune_gemv), ("GEMM", tune_gemm)]
    if coopmat_capable(dev.caps) is None:
        sweeps.append(("coopmat GEMM", tune_coopmat))
    for title, sweep in sweeps:
        res = sweep(ctx)
        print(f"== {title} tuning on {dev.caps.name}")
        by_problem: dict[str, list[tuple[float, str]]] = {}
        for prob, tag, us in res:
            by_problem.setdefault(prob, []).append((us, tag))
        for prob, lst in by_problem.items():
            lst.sort()
            print(f"{prob}: " + "  ".join(f"{tag} {us:.2f}" for us, tag in lst))


if __name__ == "__main__":
    main_tune()
