"""GPU timing helpers: L2-cold rotation, clocks at their maximum, medians.

Two times per case, both from Vulkan timestamps (host time excluded):
- **chain** (the headline): the case's call repeated back to back in one command buffer,
  rotating through L2-cold copies, each call after a compute->compute barrier as a dependent
  layer would be; GPU span / number of calls. This is how the torch peers are timed too (a
  CUDA graph of the same rotation, replayed; CUDA's inter-kernel gap is included there, the
  barrier and launch of the next dispatch here).
- **isolated**: timestamps TOP_OF_PIPE -> BOTTOM_OF_PIPE around each dispatch alone: adds the
  timestamps' own cost (an empty dispatch reads ~2.6 us isolated on the H100).

Before timing, the GPU runs the same work until its SM clock is near its maximum
(vkq.bench.clocks; a fixed warm-up where the clock cannot be read).
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable

import numpy as np

from vkq.bench.clocks import sm_clock
from vkq.bench.roofline import StreamingRead, read_variant
from vkq.runtime import CommandBatch, Device


def copies_for_l2_cold(bytes_per_copy: int, l2_bytes: int, max_copies: int = 64) -> int:
    """How many distinct copies to rotate through so that >= 2x the L2 lies between two reads
    of the same copy (docs/design.md §6)."""
    return int(min(max_copies, max(2, -(-2 * l2_bytes // max(bytes_per_copy, 1)) + 1)))


#: GPU time spent running a case untimed before timing it (at least; see `warm_up`).
WARMUP_NS = 200e6
#: Longest extra warm-up while waiting for the SM clock to reach its maximum.
CLOCK_WAIT_NS = 3e9


@dataclasses.dataclass
class Timing:
    chain_ns: float         # per call, median span/calls of several chains
    isolated_ns: float      # per call, median of per-dispatch timestamps
    sm_mhz: int | None      # SM clock right after timing (None: unknown)
    sm_max_mhz: int | None

    @property
    def clock_note(self) -> str:
        """A warning when the case ran below 95 % of the maximum SM clock."""
        if self.sm_mhz is None or self.sm_max_mhz is None or self.sm_mhz >= 0.95 * self.sm_max_mhz:
            return ""
        return f"SM clock {self.sm_mhz}/{self.sm_max_mhz} MHz"


def _chain(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
           calls: int) -> float:
    """GPU span (ns) of `calls` consecutive calls in one command buffer."""
    with device.batch(timestamps="span") as b:
        for i in range(calls):
            record(b, i % n_copies)
    return float(b.span_ns)


def warm_up(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
            warmup_ns: float = WARMUP_NS) -> None:
    """Run the case untimed (pipelines, caches and page tables warm), then bring the SM clock
    up. Where NVML reads the clock, >= 10 ms of the case's own work, then streaming reads
    until the clock is near its maximum: chains of small dispatches recorded from Python
    leave the GPU idle too often to raise it (seen: 800-900 MHz for seconds on the H100).
    Elsewhere, `warmup_ns` of the case's own work."""
    clock = sm_clock(device.caps.name)
    own_ns = warmup_ns if clock is None else min(warmup_ns, 10e6)
    spent, per_call = 0.0, None
    while per_call is None or spent < own_ns:
        n = 4 if per_call is None else int(np.clip((own_ns - spent) / per_call, 4, 4000))
        span = _chain(device, record, n_copies, n)
        spent += span
        per_call = max(span / n, 1.0)
    if clock is not None:
        raise_clock(device, clock)


def raise_clock(device: Device, clock: Any, max_ns: float = CLOCK_WAIT_NS) -> None:
    """Stream reads (a 256 MiB buffer, held per device) until the SM clock is near its max."""
    stream = _STREAMS.get(device)
    if stream is None:
        stream = _STREAMS[device] = StreamingRead(device, 256 << 20)
    stream.keep_busy(max_ns / 1e9, until=clock.near_max)


_STREAMS: "weakref.WeakKeyDictionary[Device, StreamingRead]" = weakref.WeakKeyDictionary()


def time_call(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
              repeats: int, warmup_ns: float = WARMUP_NS) -> Timing:
    """Chained and isolated GPU time of one call. `record(batch, i)` records the dispatch(es)
    of one call using copy `i % n_copies`; calls rotate through the copies so none is warm in
    L2."""
    warm_up(device, record, n_copies, warmup_ns)
    calls = max(n_copies, 16 // n_copies * n_copies)
    chains = [_chain(device, record, n_copies, calls) / calls for _ in range(max(3, repeats // 4))]
    isolated = _isolated(device, record, n_copies, repeats)
    clock = sm_clock(device.caps.name)
    return Timing(float(np.median(chains)), isolated, clock.mhz() if clock else None,
                  clock.max_mhz if clock else None)


def _isolated(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
              repeats: int) -> float:
    with device.batch(timestamps=True) as b:
        for i in range(max(repeats, n_copies)):
            before = len(b.kernel_names)
            record(b, i % n_copies)
            per_call_dispatches = len(b.kernel_names) - before
    t = np.asarray(b.timings_ns, dtype=np.float64).reshape(-1, per_call_dispatches).sum(axis=1)
    return float(np.median(t))


def time_dispatches(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
                    repeats: int, warmup_ns: float = WARMUP_NS) -> float:
    """Median isolated GPU time (ns) of one call, after `warm_up` (see `time_call`)."""
    if warmup_ns:
        warm_up(device, record, n_copies, warmup_ns)
    return _isolated(device, record, n_copies, repeats)


def measure_dispatch_overhead(device: Device, repeats: int = 20) -> Timing:
    """GPU time of a one-workgroup dispatch that reads nothing, timed like every benchmark
    row (chained and isolated): the floor under them."""
    kernel = device.kernel(read_variant())
    with device.buffer(16 * 256) as sink, device.buffer(16) as data:
        def record(b: CommandBatch, i: int) -> None:
            b.dispatch(kernel, (1, 1, 1), buffers={"t_sink": sink, "t_data": data},
                       push={"n_words": 0, "magic": 0x9E3779B9, "first_word": 0})
        return time_call(device, record, 1, repeats, warmup_ns=0)
