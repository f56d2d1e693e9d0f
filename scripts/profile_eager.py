"""Developer diagnostic: where an eager vkq.linear call (M = 1, 4096x4096 int4, DeviceTensor in
and out) spends host time, by cProfile over a chain of calls."""
from __future__ import annotations

import cProfile
import pstats
import time

import numpy as np

import vkq
from vkq.bench.suites.q4gsw_linear import random_weight


def main() -> None:
    w = random_weight(4096, 4096, 32, asym=False)
    x = vkq.to_device(np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float32) / 8)
    h = x
    for _ in range(50):
        h = vkq.linear(h, w)
    h.numpy()
    for _ in range(3):
        t = time.perf_counter()
        h = x
        for _ in range(500):
            h = vkq.linear(h, w)
        h.numpy()
        print(f"chain: {(time.perf_counter() - t) / 500 * 1e6:.1f} us/call", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    h = x
    for _ in range(500):
        h = vkq.linear(h, w)
    h.numpy()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
