"""GPU timing helpers: timestamps around each dispatch, L2-cold rotation, medians."""
from __future__ import annotations

from typing import Callable

import numpy as np

from vkq.runtime import CommandBatch, Device


def copies_for_l2_cold(bytes_per_copy: int, l2_bytes: int, max_copies: int = 64) -> int:
    """How many distinct copies to rotate through so that >= 2x the L2 lies between two reads
    of the same copy (SPEC §6)."""
    return int(min(max_copies, max(2, -(-2 * l2_bytes // max(bytes_per_copy, 1)) + 1)))


def time_dispatches(device: Device, record: Callable[[CommandBatch, int], None], n_copies: int,
                    repeats: int, warmup: int = 2) -> float:
    """Median GPU time (ns) of one dispatch. `record(batch, i)` records the dispatch(es) of one
    call using copy `i % n_copies`; calls rotate through the copies so none is warm in L2."""
    per_call = None
    times: list[float] = []
    total = warmup + repeats
    with device.batch(timestamps=True) as b:
        for i in range(total):
            before = len(b.kernel_names)
            record(b, i % n_copies)
            per_call = len(b.kernel_names) - before
    t = np.asarray(b.timings_ns, dtype=np.float64).reshape(total, per_call).sum(axis=1)
    times.extend(t[warmup:])
    return float(np.median(times))
