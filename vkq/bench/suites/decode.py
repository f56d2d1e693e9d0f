"""The decode-step benchmark: every linear layer of a Llama decoder stack at batch 1.

Per layer: q/k/v (one fused int4 linear, its rms_norm folded in) -> o (+ residual) -> gate/up
(one fused int4 linear with the rms_norm folded in and silu(gate) * up) -> down (+ residual):
4 dispatches (the PyTorch peer runs rms_norm as ops of its own). Attention itself
is not included: the o projection reads the q projection's output where attention's would
be, and k, v are computed and dropped. Each layer has weights of its own in memory (device
copies of one random weight per projection), so a token reads every layer's bytes from
DRAM, as a real model does.

Rows (ms per token): vkq's graph replay (wall: inputs in, one submit, wait, outputs out) and
its GPU span (timestamps around the whole program), the same stack as eager vkq calls on
DeviceTensors, and with `--compare torch` the same stack in PyTorch: int4
`_weight_int4pack_mm` and fp16 `F.linear`, eager and as a CUDA graph replay.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import numpy as np

import vkq
from vkq.bench import BenchContext, Row, register
from vkq.bench.suites.q4gsw_linear import _copies, random_weight
from vkq.ops.q4gsw_linear import prepack_quantized


@dataclasses.dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int

    @property
    def qkv(self) -> tuple[int, int, int]:
        return (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(N, K) of each fused projection."""
        return {"qkv": (sum(self.qkv), self.hidden), "o": (self.hidden, self.heads * self.head_dim),
                "gate_up": (2 * self.intermediate, self.hidden), "down": (self.hidden, self.intermediate)}


MODELS = (ModelShape("llama3-8b", 4096, 32, 8, 128, 14336, 32),
          ModelShape("llama3.2-1b", 2048, 32, 8, 64, 8192, 16))
QUICK_MODELS = (ModelShape("tiny", 256, 4, 2, 64, 512, 2),)
GROUP_SIZE = 32
EPS = 1e-5


class VkqStack:
    """The stack's weights on the device: per layer, its own copy of each projection."""

    def __init__(self, device: vkq.Device, model: ModelShape, asym: bool):
        self.model = model
        self.layers: list[dict[str, Any]] = []
        lin = model.linears()
        copies = {}
        for i, (name, (n, k)) in enumerate(lin.items()):
            base = prepack_quantized(random_weight(n, k, GROUP_SIZE, asym, seed=i), device)
            copies[name] = _copies(base, model.layers)
        rng = np.random.default_rng(7)
        for layer in range(model.layers):
            self.layers.append({
                "qkv": vkq.FusedWeight(copies["qkv"][layer], model.qkv),
                "o": copies["o"][layer],
                "gate_up": vkq.FusedWeight(copies["gate_up"][layer], (model.intermediate,) * 2, "silu_mul"),
                "down": copies["down"][layer],
                "norm1": (1 + 0.1 * rng.standard_normal(model.hidden)).astype(np.float32),
                "norm2": (1 + 0.1 * rng.standard_normal(model.hidden)).astype(np.float32),
            })
        self.weight_bytes = sum(c[0].nbytes for c in copies.values()) * model.layers
        self._all = [w for c in copies.values() for w in c]

    def step(self, x: Any) -> Any:
        """One token through every layer (eager on DeviceTensors, or captured on graph values)."""
        for L in self.layers:
            q, _k, _v = vkq.linear(x, L["qkv"], rms_norm=(L["norm1"], EPS))  # norm in the GEMV
            x = vkq.linear(q, L["o"], residual=x)
            a = vkq.linear(x, L["gate_up"], rms_norm=(L["norm2"], EPS))
            x = vkq.linear(a, L["down"], residual=x)
        return x

    def close(self) -> None:
        for w in self._all:
            w.close()


def _warm(g: vkq.Graph, x: np.ndarray, seconds: float = 0.3) -> None:
    """Replay for a while first: clocks rise under sustained work (as a serving loop has)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        g(x=x)


def _median_wall(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _vkq_rows(ctx: BenchContext, model: ModelShape, asym: bool) -> Iterator[Row]:
    dev = ctx.device
    kind = "asym" if asym else "sym"
    shape = f"{model.name} L={model.layers} g{GROUP_SIZE} {kind}"
    stack = VkqStack(dev, model, asym)
    x = np.random.default_rng(3).standard_normal((1, model.hidden)).astype(np.float32)
    nbytes = stack.weight_bytes + 4 * model.hidden * 2
    note = f"attention excluded; per token; {nbytes / 1e9:.2f} GB/token"
    try:
        with vkq.graph(dev) as g:
            xin = g.input("x", (1, model.hidden))
            g.output("y", stack.step(xin))
        try:
            y_graph = g(x=x)["y"]
            _warm(g, x)
            walls, spans = [], []
            for _ in range(max(10, ctx.repeats)):  # wall and GPU span of the same replays
                t = time.perf_counter()
                g(x=x)
                walls.append(time.perf_counter() - t)
                spans.append(g.gpu_ns())
            wall, span = float(np.median(walls)), float(np.median(spans))
            stats = f"{g.n_dispatches} dispatches, {g.n_barriers} barriers, arena {g.arena_bytes >> 10} KiB"
            yield Row("decode", shape, "vkq graph replay (wall)", wall * 1e6, bytes=nbytes,
                      note=f"{note}; GPU span {span / 1e3:.1f} us ({100 * span / 1e3 / (wall * 1e6):.0f}% of wall); {stats}")
            yield Row("decode", shape, "vkq graph replay (GPU span)", span / 1e3, bytes=nbytes, note=note)
        finally:
            g.close()
        xd = vkq.to_device(x, device=dev)

        def eager() -> np.ndarray:
            return stack.step(xd).numpy()
        y_eager = eager()
        if not np.array_equal(y_eager, y_graph):
            raise AssertionError("decode bench: graph replay and eager calls disagree")
        wall = _median_wall(eager, max(3, ctx.repeats // 4))
        yield Row("decode", shape, "vkq eager (DeviceTensor chain)", wall * 1e6, bytes=nbytes,
                  note=f"{note}; {6 * model.layers} calls")
        xd.close()
    finally:
        stack.close()


@register("decode")
def bench_decode(ctx: BenchContext) -> Iterator[Row]:
    for model in QUICK_MODELS if ctx.quick else MODELS:
        for asym in (False, True):
            yield from _vkq_rows(ctx, model, asym)
            ctx.device.synchronize()
        if "torch" in ctx.compare:
            from vkq.bench.suites.decode_torch import torch_decode_rows
            yield from torch_decode_rows(ctx, model, GROUP_SIZE, EPS)
