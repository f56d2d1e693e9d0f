"""Llama end to end (vkq.models.llama) with random int4 g32 weights: prefill tokens per
second for a 512-token prompt, and decode tokens per second (one graph replay per token) at
contexts 128 and 2048. Rows give µs per token; the note gives tokens per second and the
decode graph's GPU time per token."""
from __future__ import annotations

from typing import Iterator

from vkq.bench import BenchContext, Row, register
from vkq.bench.clocks import sm_clock
from vkq.bench.timing import raise_clock
from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights, benchmark

FULL = ("llama-3.2-1b", "llama-3-8b")
PROMPT, CONTEXTS, DECODE_STEPS = 512, (128, 2048), 64


@register("llama")
def bench_llama(ctx: BenchContext) -> Iterator[Row]:
    names, prompt, contexts, steps = (("tiny",), 16, (16, 64), 8) if ctx.quick else \
        (FULL, PROMPT, CONTEXTS, DECODE_STEPS)
    for name in names:
        config = CONFIGS[name]
        weights = (LlamaWeights.random(config) if ctx.quick
                   else LlamaWeights.random_on_device(config, ctx.device))
        model = LlamaModel(weights, ctx.device, max_seq=max(contexts) + steps + 1)
        clock = sm_clock(ctx.device.caps.name)
        try:
            for context in contexts:
                if clock is not None:  # a cold GPU decodes at idle clocks (seen: 515 vs 812 tok/s)
                    raise_clock(ctx.device, clock)
                r = benchmark(model, context, steps)
                yield Row("llama", f"{name} ctx={context}", "decode (graph replay)",
                          1e6 / r["decode_tok_s"],
                          note=f"{r['decode_tok_s']:.1f} tok/s; GPU {r['decode_gpu_ms']:.3f} ms/token")
            if clock is not None:
                raise_clock(ctx.device, clock)
            r = benchmark(model, prompt, 1)
            yield Row("llama", f"{name} prompt={prompt}", "prefill (eager)", 1e6 / r["prefill_tok_s"],
                      note=f"{r['prefill_tok_s']:.0f} tok/s")
        finally:
            model.close()
