"""Developer diagnostic (GPU machine): the eager per-call suite with and without a CUDA
context in the same process (torch's peers create one in `vkq bench --compare torch`)."""
from __future__ import annotations


import vkq
from vkq.bench import BenchContext
from vkq.bench.suites.eager import bench_eager


def run(label: str) -> None:
    ctx = BenchContext(device=vkq.default_device(), roofline_gbps=0.0, quick=False, repeats=20)
    for row in bench_eager(ctx):
        print(f"{label:22s} {row.kernel:45s} {row.us:8.1f} us", flush=True)


if __name__ == "__main__":
    run("no CUDA context")
    import torch
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    run("CUDA context alive")
