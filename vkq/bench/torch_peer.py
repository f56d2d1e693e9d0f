"""Timing PyTorch peers on the same GPU (`python -m vkq bench --compare torch`).

Timed like vkq's kernels: CUDA events, calls rotating through distinct weight copies
(L2-cold), median of the repeats, after a warm-up that brings the clocks up. The calls of
one rotation are captured in a CUDA graph and replayed, so Python's launch gaps do not count
against the peer (vkq's timestamps exclude host time too); ops that cannot be captured fall
back to events around each call.
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
