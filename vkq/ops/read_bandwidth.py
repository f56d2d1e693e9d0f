"""The read roofline: how fast a compute shader can stream uvec4 words from device memory."""
from __future__ import annotations

import numpy as np

from vkq.runtime import Device

VARIANT = "read_bandwidth"


def measure_read_bandwidth(device: Device, nbytes: int = 1 << 30, repeats: int = 10) -> dict:
    """Median GB/s over `repeats` timed passes over one `nbytes` buffer (no host copies:
    the buffer is filled by a GPU copy of a small pattern, and its content does not matter).

    The buffer should be much larger than the last-level cache (1 GiB vs the H100's 50 MB L2).
    """
    nbytes = min(int(nbytes), device.caps.max_storage_buffer_range,
                 device.caps.max_memory_allocation_size) // 16 * 16
    kernel = device.kernel(VARIANT)
    wg, unroll = kernel.info.params["WG"], kernel.info.params["UNROLL"]
    n_words = nbytes // 16
    groups = min(-(-n_words // (wg * unroll)), device.caps.max_workgroup_count[0])
    with device.buffer(nbytes) as data, device.buffer(16 * 256) as sink:
        with device.batch() as b:  # give the memory real pages before timing
            b.upload(sink, np.zeros(16 * 256, np.uint8))
        with device.batch(timestamps=True) as b:
            for _ in range(repeats + 1):
                b.dispatch(kernel, (groups, 1, 1), buffers={"t_sink": sink, "t_data": data},
                           push={"n_words": n_words, "magic": 0x9E3779B9})
        times = b.timings_ns[1:]  # the first pass warms up pipelines and page tables
    t = float(np.median(times))
    return {"bytes": nbytes, "ns": t, "gbps": nbytes / t}


def measure_dispatch_overhead(device: Device, repeats: int = 20) -> float:
    """GPU time (ns) of a one-workgroup dispatch that reads nothing, timed like every benchmark
    row: the floor under them."""
    from vkq.bench.timing import time_dispatches
    kernel = device.kernel(VARIANT)
    with device.buffer(16 * 256) as sink, device.buffer(16) as data:
        def record(b, i: int) -> None:
            b.dispatch(kernel, (1, 1, 1), buffers={"t_sink": sink, "t_data": data},
                       push={"n_words": 0, "magic": 0x9E3779B9})
        return time_dispatches(device, record, 1, repeats, warmup_ns=0)


def keep_busy(device: Device, seconds: float = 1.0, nbytes: int = 256 << 20) -> None:
    """Stream reads for about `seconds` of GPU time. The bench runs this before each suite:
    on the H100 the first cases of a suite that followed another read up to 4x slow, the
    streaming read kernel included, while a per-case warm-up of 200 ms did not cure it."""
    if device.caps.device_type == "cpu":
        return  # nothing to ramp up on a CPU device
    kernel = device.kernel(VARIANT)
    wg, unroll = kernel.info.params["WG"], kernel.info.params["UNROLL"]
    n_words = nbytes // 16
    groups = min(-(-n_words // (wg * unroll)), device.caps.max_workgroup_count[0])
    per_pass_ns = nbytes / 2.0  # a guess (2 GB/s) for the first batch, measured after it
    spent = 0.0
    with device.buffer(nbytes) as data, device.buffer(16 * 256) as sink:
        while spent < seconds * 1e9:
            passes = int(min(2000, max(4, (seconds * 1e9 - spent) / per_pass_ns)))
            with device.batch(timestamps=True) as b:
                for _ in range(passes):
                    b.dispatch(kernel, (groups, 1, 1), buffers={"t_sink": sink, "t_data": data},
                               push={"n_words": n_words, "magic": 0x9E3779B9})
            spent += b.timestamps_ns[-1][1]
            per_pass_ns = max(b.timestamps_ns[-1][1] / passes, 1.0)
