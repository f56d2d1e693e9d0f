"""The read roofline: how fast a compute shader can stream uvec4 words from device memory."""
from __future__ import annotations

from typing import Callable

import numpy as np

from vkq.runtime import Device
from vkq.shaderlib import variant_name

def read_variant() -> str:
    """The streaming-read kernel (one variant, no axes)."""
    return variant_name("read_bandwidth")


class StreamingRead:
    """One large buffer streamed by the read kernel: the roofline measurement, and the work
    that keeps the GPU busy between benchmark suites.

    The bench holds one for its whole run instead of freeing large buffers between suites: on
    the H100 the cases timed right after a 256 MiB-1 GiB buffer was freed read up to 4x slow.
    """

    def __init__(self, device: Device, nbytes: int = 1 << 30):
        self.device = device
        self.nbytes = min(int(nbytes), device.caps.max_storage_buffer_range,
                          device.caps.max_memory_allocation_size) // 16 * 16
        self.kernel = device.kernel(read_variant())
        wg, unroll = self.kernel.info.params["WG"], self.kernel.info.params["UNROLL"]
        self.n_words = self.nbytes // 16
        self.groups = min(-(-self.n_words // (wg * unroll)), device.caps.max_workgroup_count[0])
        # Contents do not matter (xor-folded, never compared), so the buffer is not filled.
        self.data = device.buffer(self.nbytes)
        self.sink = device.buffer(16 * 256)

    def _passes(self, n: int) -> list[float]:
        with self.device.batch(timestamps=True) as b:
            for _ in range(n):
                b.dispatch(self.kernel, (self.groups, 1, 1),
                           buffers={"t_sink": self.sink, "t_data": self.data},
                           push={"n_words": self.n_words, "magic": 0x9E3779B9, "first_word": 0})
        return b.timings_ns

    def measure(self, repeats: int = 10) -> dict:
        """Median GB/s over `repeats` passes (the first pass is not counted: it warms up
        pipelines and page tables)."""
        t = float(np.median(self._passes(repeats + 1)[1:]))
        return {"bytes": self.nbytes, "ns": t, "gbps": self.nbytes / t}

    def keep_busy(self, seconds: float = 1.0, until: Callable[[], bool] | None = None) -> None:
        """Stream for about `seconds` of GPU time, so clocks are up when timing starts; with
        `until`, stop as soon as it returns True (checked every ~20 ms of streaming)."""
        if self.device.caps.device_type == "cpu":
            return  # nothing to ramp up on a CPU device
        spent, per_pass = 0.0, None
        while spent < seconds * 1e9:
            n = 4 if per_pass is None else int(min(2000, max(4, (seconds * 1e9 - spent) / per_pass)))
            if until is not None and per_pass is not None:
                n = min(n, max(4, int(20e6 / per_pass)))
            times = self._passes(n)
            spent += sum(times)
            per_pass = max(sum(times) / n, 1.0)
            if until is not None and until():
                return

    def close(self) -> None:
        self.data.close()
        self.sink.close()

    def __enter__(self) -> "StreamingRead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
