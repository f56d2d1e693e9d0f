"""Developer diagnostic (GPU machine): where a Llama decode step's GPU time goes, per kernel
(timestamps around every dispatch of the decode graph), at a given context."""
from __future__ import annotations

import sys

import numpy as np

import vkq
from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights


def main(name: str = "llama-3-8b", context: int = 128) -> None:
    dev = vkq.default_device()
    model = LlamaModel(LlamaWeights.random_on_device(CONFIGS[name], dev), dev, max_seq=context + 8)
    token = int(np.argmax(model.prefill(np.arange(context) % 1000)))
    token, _ = model.step(token)
    rows = model.step_graph().profile(token=token, pos=model.pos)
    by_kernel: dict[str, list[float]] = {}
    for row in rows:
        by_kernel.setdefault(row["kernel"], []).append(row["us"])
    print(f"{name} ctx={context}: {len(rows)} dispatches, {sum(r['us'] for r in rows):.1f} us summed")
    for kname, us in sorted(by_kernel.items(), key=lambda kv: -sum(kv[1])):
        print(f"   {kname:44s} x{len(us):3d}  {sum(us):8.1f} us  ({np.median(us):.2f} each)")
    model.close()


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["llama-3-8b"]), *([int(sys.argv[2])] if len(sys.argv) > 2 else []))
