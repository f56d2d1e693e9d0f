"""GPU timing helpers: chains of timestamped calls, L2-cold rotation, medians.

A call's time is measured the way a model runs it: as one link of a chain of dependent calls
(a barrier between each, as between layers), the chain's GPU span divided by its length.
The torch peers are timed the same way (a CUDA graph of the rotation, replayed), so neither
side pays a host launch gap, and both pay their own inter-kernel dependency cost.
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
    """Median GPU time (ns) per call in a chain of calls. `record(batch, i)` records the
    dispatch(es) of one call using copy `i % n_copies`; calls rotate through the copies so
    none is warm in L2. The median is over `max(5, repeats // 2)` chains of
    `max(n_copies, 8)` calls.

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
    length, chains = max(n_copies, 8), max(5, repeats // 2)
    start, end = _chain(device, record, n_copies, length * chains)
    spans = (end[length - 1::length] - start[0::length]) / length
    return float(np.median(spans))
