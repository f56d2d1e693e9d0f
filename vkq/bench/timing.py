"""GPU timing helpers: timestamps around each dispatch, L2-cold rotation, medians.

vkq's rows are the GPU duration of the call's own dispatch(es), each between full barriers,
timestamped TOP_OF_PIPE -> BOTTOM_OF_PIPE: host time and the cost of the barrier before it
are excluded (the `overhead` row shows the floor of an empty dispatch). The torch peers are
timed as a CUDA graph of the rotation, replayed, divided by its length: host launch gaps are
excluded there too, CUDA's inter-kernel gap (about a microsecond) is not.

Measured on the H100 (`vkq bench`, Nov 2026): as one link of a chain of dependent calls, each
vkq call costs about 3 us more than its isolated duration (empty dispatch: 5.5 us per link vs
2.6 us isolated), the price of the full barrier and the two timestamps recorded around every
dispatch; narrower barriers are the runtime's next step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from vkq.runtime import CommandBatch, Device


def copies_for_l2_cold(bytes_per_copy: int, l2_bytes: int, max_copies: int = 64) -> int:
    """How many distinct copies to rotate through so that >= 2x the L2 lies between two reads
    of the same copy (SPEC §6)."""
    return int(min(max_copies, max(2, -(-2 * l2_bytes // max(bytes_per_copy, 1)) + 1)))


#: GPU time spent running a case untimed before timing it (see `time_dispatches`).
WARMUP_NS = 200e6


def _chain(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
           calls: int) -> tuple[np.ndarray, np.ndarray]:
    """GPU start and end (ns) of each of `calls` consecutive calls, in one command buffer."""
    with device.batch(timestamps=True) as b:
        for i in range(calls):
            before = len(b.kernel_names)
            record(b, i % n_copies)
            per_call = len(b.kernel_names) - before
    ts = np.asarray(b.timestamps_ns, dtype=np.float64).reshape(calls, per_call, 2)
    return ts[:, 0, 0], ts[:, -1, 1]


def time_dispatches(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
                    repeats: int, warmup_ns: float = WARMUP_NS) -> float:
    """Median GPU time (ns) of one call. `record(batch, i)` records the dispatch(es) of one
    call using copy `i % n_copies`; calls rotate through the copies so none is warm in L2.

    About `warmup_ns` of the same work runs untimed first: GPUs drop their clocks when idle
    (between cases the host packs weights) and take a while to raise them again; timing
    without this read up to 5x slow on the H100, at random.
    """
    spent, per_call = 0.0, None
    while spent < warmup_ns:
        n = 4 if per_call is None else int(np.clip((warmup_ns - spent) / per_call, 4, 4000))
        start, end = _chain(device, record, n_copies, n)
        spent += end[-1] - start[0]
        per_call = max((end[-1] - start[0]) / n, 1.0)
    with device.batch(timestamps=True) as b:
        for i in range(max(repeats, n_copies)):
            before = len(b.kernel_names)
            record(b, i % n_copies)
            per_call_dispatches = len(b.kernel_names) - before
    t = np.asarray(b.timings_ns, dtype=np.float64).reshape(-1, per_call_dispatches).sum(axis=1)
    return float(np.median(t))
