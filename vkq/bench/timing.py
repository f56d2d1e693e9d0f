"""GPU timing helpers: timestamps around each dispatch, L2-cold rotation, medians."""
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


def _median_ns(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
               repeats: int, skip: int) -> float:
    total = skip + repeats
    with device.batch(timestamps=True) as b:
        for i in range(total):
            before = len(b.kernel_names)
            record(b, i % n_copies)
            per_call = len(b.kernel_names) - before
    t = np.asarray(b.timings_ns, dtype=np.float64).reshape(total, per_call).sum(axis=1)
    return float(np.median(t[skip:]))


def time_dispatches(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
                    repeats: int, warmup_ns: float = WARMUP_NS) -> float:
    """Median GPU time (ns) of one call. `record(batch, i)` records the dispatch(es) of one
    call using copy `i % n_copies`; calls rotate through the copies so none is warm in L2.

    About `warmup_ns` of the same work runs untimed first: GPUs drop their clocks when idle
    (between cases the host packs weights) and take a while to raise them again; timing
    without this read up to 5x slow on the H100, at random.
    """
    probe = _median_ns(device, record, n_copies, repeats=2, skip=1)
    n = int(min(5000, max(2, warmup_ns / max(probe, 1.0))))
    if warmup_ns > 0:
        _median_ns(device, record, n_copies, repeats=n, skip=0)
    return _median_ns(device, record, n_copies, repeats, skip=2)
