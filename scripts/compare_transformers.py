"""Developer check (GPU machine, needs torch + transformers): vkq's Llama decoder against
Hugging Face `transformers`' LlamaForCausalLM holding the same (dequantized int4) weights in
float32. Prints, per config, the largest logit difference relative to the logits' scale over
a prompt and N greedy steps, and whether the greedy tokens agree.

    python3 scripts/compare_transformers.py tiny llama-3.2-1b llama-3-8b --steps 32

Configs over 2 B parameters (llama-3-8b) use one random layer for every layer (host memory
and quantizing time: 32 distinct 8B layers would take minutes to make); the math is the
same, and so is the comparison.
"""
from __future__ import annotations

import argparse

import numpy as np

from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights


def hf_model(w: LlamaWeights):
    import torch

    from vkq.bench.llama_torch import hf_llama
    return hf_llama(w, "cuda", "fp16", attn="eager", dtype=torch.float32)[0]


def random_weights(name: str) -> LlamaWeights:
    c = CONFIGS[name]
    if c.layers * (c.q_dim + 2 * c.kv_dim + c.q_dim + 3 * c.intermediate) * c.hidden < 2e9:
        return LlamaWeights.random(c, seed=1)
    return LlamaWeights.random_repeated(c, seed=1)


def compare(name: str, steps: int) -> None:
    import torch
    w = random_weights(name)
    prompt = [int(t) for t in np.random.default_rng(2).integers(0, w.config.vocab, 8)]
    model = LlamaModel(w, max_seq=len(prompt) + steps + 1)
    vk_logits = [model.prefill(prompt)]
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(np.argmax(vk_logits[-1])))
        vk_logits.append(model.step(tokens[-1])[1])
    model.close()
    hf = hf_model(w)
    with torch.no_grad():
        ref = hf(torch.tensor([tokens], device="cuda")).logits[0].double().cpu().numpy()
    ref = ref[len(prompt) - 1:]  # the logits after the prompt and after each decoded token
    vk = np.stack(vk_logits).astype(np.float64)
    err = np.abs(vk - ref).max() / np.abs(ref).max()
    same = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(vk, ref)]
    print(f"{name}: {len(prompt)}-token prompt + {steps} greedy steps: max |logit diff| / max "
          f"|logit| = {err:.2e}; greedy tokens agree at {sum(same)}/{len(same)} positions",
          flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    for name in args.configs:
        compare(name, args.steps)
