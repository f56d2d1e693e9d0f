"""qta8a_linear benchmark: `vkq.linear(x, w4, act_quant="int8")` against the weight-only q4gsw
path on the same weights.

Rows at the decode shapes (docs/design.md §6: 4096x4096, 1024x4096, 14336x4096, 4096x14336),
group size 32, M = 1, 2, 4, 8, 16, 24, 128 and 512, weights L2-cold. Each M gives:

- "qta8a": the int8 path as one call runs it, the quantize pass *and* the fused GEMV or GEMM
  (two dependent dispatches; kernel names joined with " + "); at M = 1 the GEMV is forced,
  since `kernel="auto"` sends M <= WEIGHT_ONLY_MAX_ROWS to the weight-only path; where the
  GEMM runs on int8 tensor cores, also the CUDA-core GEMM forced (TOPS against the coopmat
  int8 peak and the integer-dot peak respectively);
- "q4gsw": the weight-only op on the same weight and float x, its own routing (on tensor
  cores its fp16 coopmat GEMM), and for the GEMM rows its fp32 GEMM forced: the peers that
  WEIGHT_ONLY_MAX_ROWS and the targets are judged against (SPEC §5: M = 1 with the quantize
  pass counted; GEMM at M = 512, 4096x4096: the int8 path >= 2x faster than the q4gsw GEMM);
- the quantize pass alone at M = 1 and 512 (K = 4096): its share of those times.

No torch peer: torchao (whose 8da4w is the PyTorch form of this op) is not on the GPU
machine, and PyTorch itself has no int8 x int4 CUDA kernel.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.suites.coopmat_peak import coopmat_peaks
from vkq.bench.suites.q4gsw_linear import random_weight
from vkq.bench.suites.q8ta_linear import measure_int_dot_peak
from vkq.bench.timing import copies_for_l2_cold, time_call
from vkq.ops import contract
from vkq.ops import qta8a_qga4w_linear as qta8a
from vkq.ops.contract import Plan, TensorSpec
from vkq.ops.q4gsw_linear import Q4gswLinear, prepack_quantized
from vkq.reference.q4gsw import q4gsw_dequantize_reference, q4gsw_linear_reference
from vkq.reference.qta8a_qga4w import qta8a_error_bound, qta8a_qga4w_linear_reference
from vkq.runtime import Buffer

SHAPES = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))
MS = (1, 2, 4, 8, 16, 24, 128, 512)
GROUP_SIZE = 32
SUITE = "qta8a_linear"


class _Case:
    """Device buffers for one (M, N, K): weight copies to rotate through L2-cold, x, y, and the
    scratch either op's plan asks for."""

    def __init__(self, ctx: BenchContext, m: int, n: int, k: int):
        dev = ctx.device
        self.m, self.n, self.k = m, n, k
        self.qw = random_weight(n, k, GROUP_SIZE, asym=False)
        base = prepack_quantized(self.qw, dev)
        count = copies_for_l2_cold(base.nbytes, ctx.l2_bytes)
        self.weights = [base] + [base.copy() for _ in range(count - 1)]
        self.x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        self.bx = dev.upload(self.x)
        self.by = dev.buffer(4 * m * n)
        self.bytes = base.nbytes + 4 * m * k + 4 * m * n
        self.scratch: dict[str, Buffer] = {}

    def plan(self, op_name: str, **attrs: Any) -> Plan:
        op = contract.get(op_name)
        x = TensorSpec.dense((self.m, self.k))
        # planned on every copy: a plan may make arrays a weight keeps (the fp32 GEMM's float32
        # parameters), which each copy then needs of its own; the plans are the same
        for w in self.weights[1:]:
            op.plan({"x": x}, dict(attrs, has_bias=False), w, self.device)
        return op.plan({"x": x}, dict(attrs, has_bias=False), self.weights[0], self.device)

    @property
    def device(self) -> Any:
        return self.weights[0].device

    def buffers(self, plan: Plan, i: int) -> dict[str, Any]:
        bufs: dict[str, Any] = {"x": self.bx, "y": self.by, "dummy": self.device.dummy_buffer()}
        bufs.update({f"weight.{r}": b for r, b in self.weights[i].buffers().items()})
        for role, nbytes in plan.scratch.items():  # made once, outside the timed batches
            if role not in self.scratch or self.scratch[role].nbytes < nbytes:
                self.scratch[role] = self.device.buffer(nbytes)
            bufs[role] = self.scratch[role]
        return bufs

    def time(self, ctx: BenchContext, op_name: str, plan: Plan) -> Any:
        op = contract.get(op_name)
        bufs = [self.buffers(plan, i) for i in range(len(self.weights))]
        return time_call(self.device, lambda b, i: op.record(b, bufs[i], plan), len(self.weights),
                         ctx.repeats)

    def check(self, op_name: str, plan: Plan) -> None:
        """Guard against timing a wrong kernel: a few channels against the reference."""
        with self.device.batch() as b:
            contract.get(op_name).record(b, self.buffers(plan, 0), plan)
            d = b.download(self.by)
        y = d.result().view(np.float32).reshape(self.m, self.n)
        cols = np.unique(np.linspace(0, self.n - 1, 16).astype(int))
        args = (self.x, self.qw.q[cols], self.qw.scales[cols], None, GROUP_SIZE)
        if op_name == Q4gswLinear.name:  # float x (the q4gsw suite's check)
            ref = q4gsw_linear_reference(*args)
            w = q4gsw_dequantize_reference(*args[1:])
            tol = 1e-5 * (np.abs(self.x.astype(np.float64)) @ np.abs(w).T)
            if any("coopmat" in v for v in plan.variants):  # fp16 operands (docs/design.md §5)
                tol *= (2.0 ** -9 + self.k * 2.0 ** -23) / 1e-5 * 2
        else:
            ref, tol = qta8a_qga4w_linear_reference(*args), qta8a_error_bound(*args)
        if not np.all(np.abs(y[:, cols] - ref) <= tol + 1e-6):
            raise AssertionError(f"{SUITE} bench: wrong {op_name} result at M={self.m} "
                                 f"N={self.n} K={self.k}")

    def close(self) -> None:
        for buf in self.weights + [self.bx, self.by] + list(self.scratch.values()):
            buf.close()


def _shape(m: int, n: int, k: int) -> str:
    return f"M={m} N={n} K={k} gs={GROUP_SIZE}"


def _rows(ctx: BenchContext, m: int, n: int, k: int, peak: float | None,
          tc_peak: float | None) -> Iterator[Row]:
    case = _Case(ctx, m, n, k)
    ops = 2.0 * m * n * k if m > 1 else None
    gemm = m > qta8a.GEMV_MAX_ROWS
    tensor_cores = gemm and qta8a.coopmat_refusal(case.weights[0], ctx.device.caps) is None
    try:
        for op_name, attrs, note in (
                (qta8a.Qta8aQga4wLinear.name, {"kernel": "gemv" if m == 1 else "auto"},
                 "int8 path: quantize pass + fused kernel, L2-cold"
                 + (", int8 tensor cores: TOPS vs the coopmat int8 peak" if tensor_cores else "")),
                *([(qta8a.Qta8aQga4wLinear.name, {"kernel": "gemm"},
                    "int8 path, CUDA-core GEMM forced (integer dot products), L2-cold")]
                  if tensor_cores else []),
                (Q4gswLinear.name, {"kernel": "auto"}, "peer: weight-only, float x, L2-cold"),
                *([(Q4gswLinear.name, {"kernel": "gemm"}, "peer: weight-only, fp32 GEMM forced, L2-cold")]
                  if gemm else [])):
            plan = case.plan(op_name, **attrs)
            case.check(op_name, plan)
            on_tc = any(v.startswith(qta8a.COOPMAT_FAMILY) for v in plan.variants)
            int8 = op_name != Q4gswLinear.name and gemm
            yield Row.timed(SUITE, _shape(m, n, k), " + ".join(plan.variants),
                            case.time(ctx, op_name, plan), bytes=case.bytes, ops=ops,
                            peak_tops=(tc_peak if on_tc else peak) if int8 else None, note=note)
        if k == 4096 and m in (1, 512):
            plan = case.plan(qta8a.Qta8aQga4wLinear.name, kernel="gemv" if m == 1 else "auto")
            alone = Plan(plan.dispatches[:1], {}, plan.scratch)
            yield Row.timed(SUITE, f"M={m} K={k}", plan.variants[0],
                            case.time(ctx, qta8a.Qta8aQga4wLinear.name, alone),
                            bytes=4 * m * k + 3 * m * k // 2,
                            note="the quantize pass alone (x read, int8 + octet sums written)")
    finally:
        case.close()


@register(SUITE)
def bench_qta8a_linear(ctx: BenchContext) -> Iterator[Row]:
    dev = ctx.device
    peak = ctx.cache.get("int_dot_peak_tops")  # measured by the q8ta_linear suite, if it ran
    if peak is None:
        ns, count = measure_int_dot_peak(dev, bool(dev.caps.integer_dot_product), ctx.quick,
                                         ctx.repeats)
        peak = ctx.cache["int_dot_peak_tops"] = count / ns / 1e3
    tc_peak = coopmat_peaks(ctx).get("i8")
    shapes = ((1024, 512), (256, 1024)) if ctx.quick else SHAPES
    ms = [m for m in ((1, 2, 5, 33) if ctx.quick else MS) if ctx.wants_m(m)]
    for n, k in shapes:
        for m in ms:
            yield from _rows(ctx, m, n, k, peak, tc_peak)
