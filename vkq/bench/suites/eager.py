"""Host cost of eager calls: wall time per `vkq.linear` at M = 1 (int4, gs 32), chained on
DeviceTensors (each call returns without waiting; the chain waits once at the end) and with
numpy in/out (upload, run, download, wait: one submission per call)."""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

import vkq
from vkq.bench import BenchContext, Row, register
from vkq.bench.suites.q4gsw_linear import random_weight

CHAIN = 200


@register("eager")
def bench_eager(ctx: BenchContext) -> Iterator[Row]:
    dev = ctx.device
    n = k = 512 if ctx.quick else 4096
    w = random_weight(n, k, 32, asym=False)
    x = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32) / 8
    shape = f"M=1 N={n} K={k} gs=32"
    try:
        with vkq.to_device(x, device=dev) as xd:
            vkq.linear(xd, w).numpy()  # packs and uploads the weight once
            for _ in range(3):
                h = xd
                t = time.perf_counter()
                for _ in range(CHAIN):
                    h = vkq.linear(h, w)
                h.numpy()
                chain_us = (time.perf_counter() - t) / CHAIN * 1e6
            yield Row("eager", shape, "vkq.linear DeviceTensor chain (wall/call)", chain_us,
                      note=f"{CHAIN} dependent calls, one wait at the end")
        vkq.linear(x, w, device=dev)
        times = []
        for _ in range(max(20, ctx.repeats)):
            t = time.perf_counter()
            vkq.linear(x, w, device=dev)
            times.append(time.perf_counter() - t)
        yield Row("eager", shape, "vkq.linear numpy in/out (wall/call)", float(np.median(times)) * 1e6,
                  note="upload, dispatch, download, wait")
    finally:
        w.release()
