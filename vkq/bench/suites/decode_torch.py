"""PyTorch peers of the decode-step benchmark (vkq.bench.suites.decode): the same layer stack
on the same GPU, int4 `_weight_int4pack_mm` (bf16 activations, group-wise scales and zeros)
and fp16 `F.linear`, each eager and as a CUDA graph replay. q/k/v and gate/up are fused
into one weight each, as vkq's stack does. Every layer has weights of its own."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np

from vkq.bench import BenchContext, Row
from vkq.bench.torch_peer import cuda_torch, int4pack, int4pack_mm


def _int4_weight(torch: Any, n: int, k: int, gs: int) -> tuple[Any, Any, int]:
    """A random int4 weight in `_weight_int4pack_mm`'s form: (packed, scales_and_zeros
    [K/gs, N, 2] bf16, bytes)."""
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda")
    scales = torch.empty((n, k // gs), device="cuda").uniform_(0.5 / 64, 1.5 / 64)
    zeros = torch.empty((n, k // gs), device="cuda").uniform_(-0.1, 0.1)
    packed, sz = int4pack(q, scales, zeros, torch.bfloat16)
    return packed, sz, packed.numel() * packed.element_size() + sz.numel() * sz.element_size()


def _rms_norm(torch: Any, x: Any, w: Any, eps: float) -> Any:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w


def _stack(torch: Any, model: Any, kind: str, gs: int, eps: float) -> tuple[Callable[[Any], Any], int, Any]:
    """(step(x) -> x, weight bytes per token, activation dtype) for `kind` "int4" | "fp16"."""
    F = torch.nn.functional
    lin = model.linears()
    dtype = torch.bfloat16 if kind == "int4" else torch.float16
    q_dim = model.heads * model.head_dim
    layers, nbytes = [], 0
    for _ in range(model.layers):
        layer = {"norm1": torch.ones(model.hidden, dtype=dtype, device="cuda"),
                 "norm2": torch.ones(model.hidden, dtype=dtype, device="cuda")}
        for name, (n, k) in lin.items():
            if kind == "int4":
                wp, sz, b = _int4_weight(torch, n, k, gs)
                layer[name] = (wp, sz)
            else:
                w = torch.randn(n, k, dtype=dtype, device="cuda") * 0.02
                layer[name], b = w, w.numel() * 2
            nbytes += b
        layers.append(layer)

    if kind == "int4":
        apply = lambda x, w: int4pack_mm(x, w[0], gs, w[1])  # noqa: E731
    else:
        apply = lambda x, w: F.linear(x, w)  # noqa: E731

    def step(x: Any) -> Any:
        for L in layers:
            h = _rms_norm(torch, x, L["norm1"], eps)
            qkv = apply(h, L["qkv"])
            x = x + apply(qkv[:, :q_dim], L["o"])
            h = _rms_norm(torch, x, L["norm2"], eps)
            gu = apply(h, L["gate_up"])
            g, u = gu.chunk(2, dim=-1)
            x = x + apply(F.silu(g) * u, L["down"])
        return x
    return step, nbytes, dtype


def _median(fn: Callable[[], float], repeats: int) -> float:
    return float(np.median([fn() for _ in range(repeats)]))


def torch_decode_rows(ctx: BenchContext, model: Any, gs: int, eps: float) -> Iterator[Row]:
    torch = cuda_torch()
    if torch is None:
        ctx.progress("torch with CUDA not available: no decode peer rows")
        return
    shape = f"{model.name} L={model.layers}"
    for kind in ("int4", "fp16"):
        step, nbytes, dtype = _stack(torch, model, kind, gs, eps)
        x = torch.randn(1, model.hidden, dtype=dtype, device="cuda")
        nbytes += 4 * model.hidden
        note = (f"peer, {'bf16 x, g' + str(gs) + ' asymmetric' if kind == 'int4' else 'fp16'}; "
                f"attention excluded; per token; {nbytes / 1e9:.2f} GB/token")

        def eager() -> float:
            t = time.perf_counter()
            step(x)
            torch.cuda.synchronize()
            return time.perf_counter() - t
        for _ in range(3):
            eager()
        yield Row("decode", shape, f"torch {kind} eager (wall)", _median(eager, max(5, ctx.repeats)) * 1e6,
                  bytes=nbytes, note=note)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x)

        def replay() -> float:
            t = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            return time.perf_counter() - t

        def replay_gpu() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) * 1e-3
        for _ in range(3):
            replay()
        yield Row("decode", shape, f"torch {kind} CUDA graph (wall)", _median(replay, max(5, ctx.repeats)) * 1e6,
                  bytes=nbytes, note=note)
        yield Row("decode", shape, f"torch {kind} CUDA graph (GPU)", _median(replay_gpu, max(5, ctx.repeats)) * 1e6,
                  bytes=nbytes, note=note)
        del graph, step
        torch.cuda.empty_cache()
