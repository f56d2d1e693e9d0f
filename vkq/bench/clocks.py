"""The GPU's SM clock, read through NVML (`nvidia-ml-py`) where it is importable.

Measured on the H100 (Nov 2026): the SM clock falls from 1980 MHz towards 345 MHz whenever the
GPU idles for a moment (between benchmark cases the host packs weights), and climbs back over
hundreds of milliseconds of load, not always within a fixed warm-up: rows timed meanwhile ran
up to 3x slow ("slow phases"). The timing helpers therefore keep the GPU busy until this clock
is near its maximum, and record the clock each case ran at. Without NVML (lavapipe, other
vendors) they fall back to a fixed warm-up.
"""
from __future__ import annotations

import functools
from typing import Any


class SmClock:
    """Current and maximum SM clock (MHz) of the NVIDIA GPU whose name matches the device's."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml, self._handle = nvml, handle
        self.max_mhz = int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))

    def mhz(self) -> int:
        return int(self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM))

    def near_max(self, fraction: float = 0.95) -> bool:
        return self.mhz() >= fraction * self.max_mhz


@functools.lru_cache(maxsize=None)
def sm_clock(device_name: str) -> SmClock | None:
    """The SmClock of the GPU named `device_name`, or None where NVML cannot say."""
    try:
        import pynvml as nvml
        nvml.nvmlInit()
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            if name in device_name or device_name in name:
                return SmClock(nvml, handle)
    except Exception:  # no NVML library, no NVIDIA driver, or an NVML error: no clock reading
        return None
    return None
