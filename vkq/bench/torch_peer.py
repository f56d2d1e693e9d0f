"""Timing PyTorch peers on the same GPU (`python -m vkq bench --compare torch`).

Timed like vkq's kernels: CUDA events, calls rotating through distinct weight copies
(L2-cold), median of the repeats, after a warm-up that brings the clocks up. The calls of
one rotation are captured in a CUDA graph and replayed, so Python's launch gaps do not count
against the peer (vkq's timestamps exclude host time too); ops that cannot be captured fall
back to events around each call.

`int4pack` / `int4pack_mm` turn int4 weights into PyTorch's `_weight_int4pack_mm` operands and
call it (CUDA, or its CPU twin): the decode stack's peer (suites/decode_torch.py) and the
Llama peer (llama_torch.py) share them.
"""
from __future__ import annotations

from typing import Any, Callable


def cuda_torch() -> Any | None:
    """The torch module if it is importable with a CUDA device, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def int4pack(q: Any, scales: Any, zeros: Any | None, dtype: Any) -> tuple[Any, Any]:
    """`_weight_int4pack_mm`'s operands for int4 weights w = q * scale + zero, built on the
    device of `q` (torch tensors there): q int8 [N, K] in [-8, 7], scales and zeros (None:
    symmetric) [N, K / group size]. Returns (packed weight, scales_and_zeros [K / group
    size, N, 2] in `dtype`, the activations' dtype: bfloat16 on CUDA).

    PyTorch's kernels compute w = (u - 8) * scale + zero from unsigned nibbles u = q + 8.
    Its CUDA packer takes them two to a byte, the even k in the high nibble; the CPU one
    (`_convert_weight_to_int4pack_for_cpu`) takes them one per int32."""
    import torch
    n, k = q.shape
    if n % (8 if q.is_cuda else 16) or k % 32:
        raise ValueError(f"PyTorch's int4 kernels need N % {8 if q.is_cuda else 16} == 0 and "
                         f"K % 32 == 0, got [{n}, {k}]")
    tiles = next(t for t in (8, 4, 2) if k % (16 * t) == 0)  # k-tiles of 16 per inner step
    u = q.to(torch.int32) + 8
    if q.is_cuda:
        pairs = ((u[:, 0::2] << 4) | u[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, tiles)
    z = torch.zeros_like(scales) if zeros is None else zeros
    return packed, torch.stack([scales.T, z.T], dim=-1).to(dtype).contiguous()


def int4pack_mm(x: Any, packed: Any, group_size: int, scales_and_zeros: Any) -> Any:
    """x [M, K] @ w.T for a weight from `int4pack` (on x's device: CUDA or CPU)."""
    import torch
    aten = torch.ops.aten
    mm = aten._weight_int4pack_mm if x.is_cuda else aten._weight_int4pack_mm_for_cpu
    return mm(x, packed, group_size, scales_and_zeros)


def _keep_busy(call: Callable[[int], Any], n_copies: int, seconds: float) -> None:
    """Run `call` for >= `seconds`, and on until the SM clock is near its maximum (at most 3 s
    more), as vkq's timing does (vkq.bench.clocks)."""
    import time

    import torch

    from vkq.bench.clocks import sm_clock
    clock = sm_clock(torch.cuda.get_device_name())
    end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or (clock is not None and not clock.near_max()
                                        and time.perf_counter() < end + 3.0):
        for _ in range(16):
            call(i % n_copies)
            i += 1
        torch.cuda.synchronize()


def time_cuda(call: Callable[[int], Any], n_copies: int, repeats: int,
              warmup_s: float = 0.2) -> float:
    """Median GPU time (ns) of `call(i % n_copies)`, after ~`warmup_s` of the same work."""
    import torch
    _keep_busy(call, n_copies, warmup_s)
    try:
        return _time_graph(torch, call, n_copies, repeats)
    except RuntimeError:  # not capturable (host sync inside the op): per-call events
        torch.cuda.synchronize()
        return _time_events(torch, call, n_copies, repeats)


def _time_graph(torch: Any, call: Callable[[int], Any], n_copies: int, repeats: int) -> float:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_copies):
            call(i)
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(max(3, repeats // n_copies + 1))]
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) * 1e6 / n_copies for s, e in events)
    return float(times[len(times) // 2])


def _time_events(torch: Any, call: Callable[[int], Any], n_copies: int, repeats: int) -> float:
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    torch.cuda.synchronize()
    for i, (start, end) in enumerate(events):
        start.record()
        call(i % n_copies)
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) * 1e6 for s, e in events)
    return float(times[len(times) // 2])
