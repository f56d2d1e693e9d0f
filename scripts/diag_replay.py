"""Where a graph replay's wall time goes (developer diagnostic, GPU machine): host time in
vkQueueSubmit, in the fence wait, the GPU span, for the decode stack and for programs of
trivial dispatches with as many commands, and with weights in few or many allocations."""
from __future__ import annotations

import sys
import time

import numpy as np

import vkq
from vkq.bench.suites.decode import MODELS, VkqStack


def phases(dev, g, x, n=20):
    prog = g._program
    subs, waits, spans, walls = [], [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        staging = g._in_staging["x"]
        staging.view()[: x.nbytes] = x.view(np.uint8).reshape(-1)
        t1 = time.perf_counter()
        serial = prog.submit()
        t2 = time.perf_counter()
        dev.wait(serial)
        t3 = time.perf_counter()
        subs.append(t2 - t1)
        waits.append(t3 - t2)
        walls.append(t3 - t0)
        spans.append(prog.span_ns() / 1e9)
    f = lambda v: f"{np.median(v) * 1e6:9.1f}"  # noqa: E731
    return f"submit {f(subs)} us  wait {f(waits)} us  wall {f(walls)} us  span {f(spans)} us"


def main() -> None:
    dev = vkq.default_device()
    print(dev.caps.name, flush=True)
    for model in MODELS[:1] if "--one" in sys.argv else MODELS:
        stack = VkqStack(dev, model, asym=False)
        x = np.random.default_rng(0).standard_normal((1, model.hidden)).astype(np.float32)
        with vkq.graph(dev) as g:
            g.output("y", stack.step(g.input("x", (1, model.hidden))))
        for _ in range(5):
            g(x=x)
        print(f"{model.name} graph: {g.n_dispatches} dispatches | {phases(dev, g, x)}", flush=True)
        by_kernel: dict[str, list[float]] = {}
        for row in g.profile(x=x):
            by_kernel.setdefault(row["kernel"], []).append(row["us"])
        for name, us in sorted(by_kernel.items(), key=lambda kv: -sum(kv[1])):
            print(f"   {name:40s} x{len(us):3d}  {sum(us):8.1f} us  ({np.median(us):.2f} each)")
        # the same number of dispatches, reading nothing
        with vkq.graph(dev) as e:
            v = e.input("x", (1, model.hidden))
            for _ in range(g.n_dispatches):
                v = vkq.add(v, v)
            e.output("y", v)
        for _ in range(5):
            e(x=x)
        print(f"{model.name} adds only: {e.n_dispatches} dispatches | {phases(dev, e, x)}", flush=True)
        e.close()
        g.close()
        stack.close()
        dev.synchronize()
        # sleep between replays: does the wait grow when the GPU idles?
    print("memory", dev.memory_stats())


if __name__ == "__main__":
    main()
