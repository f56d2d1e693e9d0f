"""Llama end to end (vkq.models.llama) with random int4 g32 weights: decode tokens per second
at contexts 128 and 2048 (one graph replay per token, its token read back) and prefill tokens
per second for a 512-token prompt. Rows give µs per token; decode rows also the bytes a token
reads (the linears' packed weights and the KV cache positions attention reads), so the table
shows GB/s and the fraction of the read roofline. Notes give tok/s and the GPU time per token.

With `--compare torch` (torch with CUDA, and transformers): the same models, the same int4
values, in PyTorch on the same GPU (vkq.bench.llama_torch): Hugging Face's LlamaForCausalLM
with a static KV cache sized to the context, its decode step a CUDA graph, in fp16 and with
every linear swapped for `_weight_int4pack_mm` (bf16). `--compare torch-compile` adds the
fp16 one with its step torch.compile'd (compiled again for each cache size: slow to build).
vkq's model is freed before the peers are built, and each peer before the next. A peer that
fails gives a row saying so (and its traceback on stderr) instead of ending the run.
"""
from __future__ import annotations

import traceback
from typing import Any, Generator, Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.clocks import sm_clock
from vkq.bench.llama_torch import KINDS  # the module imports torch only when a peer is built
from vkq.bench.timing import raise_clock
from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights, benchmark

FULL = ("llama-3.2-1b", "llama-3-8b")
PROMPT, CONTEXTS, DECODE_STEPS = 512, (128, 2048), 64
CHECK_PROMPT = 8  # tokens on which the peers' logits are compared with vkq's


@register("llama")
def bench_llama(ctx: BenchContext) -> Iterator[Row]:
    names, prompt, contexts, steps = (("tiny",), 16, (16, 64), 8) if ctx.quick else \
        (FULL, PROMPT, CONTEXTS, DECODE_STEPS)
    for name in names:
        config = CONFIGS[name]
        # host weights: the peers build theirs from the same values
        host = LlamaWeights.random(config) if ctx.quick else LlamaWeights.random_repeated(config)
        vkq_logits = yield from vkq_rows(ctx, name, host, prompt, contexts, steps)
        peers = [(kind, False) for kind in KINDS if "torch" in ctx.compare]
        peers += [("fp16", True)] if "torch-compile" in ctx.compare else []
        if peers:
            yield from torch_rows(ctx, name, host, prompt, contexts, steps, vkq_logits, peers)


def vkq_rows(ctx: BenchContext, name: str, host: LlamaWeights, prompt: int, contexts: tuple[int, ...],
             steps: int) -> Generator[Row, None, np.ndarray]:
    """vkq's rows; returns the logits of check_prompt() (the peers are compared with them)."""
    weights = host.to_device(ctx.device)
    model = LlamaModel(weights, ctx.device, max_seq=max(contexts) + steps + 1)
    kv_row = sum(t.shape[1] * t.dtype.itemsize for t in model.k_cache + model.v_cache)
    linears = sum(w.nbytes for w in weights.linears())
    clock = sm_clock(ctx.device.caps.name)
    try:
        for context in contexts:
            if clock is not None:  # a cold GPU decodes at idle clocks (seen: 515 vs 812 tok/s)
                raise_clock(ctx.device, clock)
            r = benchmark(model, context, steps)
            nbytes = int(linears + kv_row * mean_positions(context, steps))
            yield Row("llama", f"{name} ctx={context}", "decode (graph replay)", 1e6 / r["decode_tok_s"],
                      bytes=nbytes, note=f"{r['decode_tok_s']:.1f} tok/s; GPU {r['decode_gpu_ms']:.3f} "
                                         f"ms/token; {nbytes / 1e9:.3g} GB/token")
        if clock is not None:
            raise_clock(ctx.device, clock)
        r = benchmark(model, prompt, 1)
        yield Row("llama", f"{name} prompt={prompt}", "prefill (eager)", 1e6 / r["prefill_tok_s"],
                  note=f"{r['prefill_tok_s']:.0f} tok/s")
        model.reset()
        return model.prefill(check_prompt(host))
    finally:
        model.close()
        weights.release()


def torch_rows(ctx: BenchContext, name: str, host: LlamaWeights, prompt: int,
               contexts: tuple[int, ...], steps: int, vkq_logits: np.ndarray,
               peers: list[tuple[str, bool]], device: str = "cuda") -> Iterator[Row]:
    """The PyTorch peers' rows (module docstring): `peers` lists (kind, torch.compile'd);
    `device` "cpu" only for tests."""
    from vkq.bench.torch_peer import cuda_torch
    if device == "cuda" and cuda_torch() is None:
        ctx.progress("torch with CUDA not available: no llama peer rows")
        return
    try:
        from vkq.bench.llama_torch import TorchLlama
        import transformers  # noqa: F401
    except ImportError as e:
        ctx.progress(f"no llama peer rows: {e}")
        return
    clock = sm_clock(ctx.device.caps.name) if device == "cuda" else None
    for kind, compiled in peers:
        label = f"torch {kind}{' compiled' if compiled else ''}"
        ctx.progress(f"  building the {label} peer of {name}")
        peer = None
        try:
            peer = TorchLlama(host, device, kind, max_seq=contexts[0] + steps + 1, compile=compiled)
            agree = agreement(peer.prefill(check_prompt(host)), vkq_logits)  # benchmark() resets
            for i, context in enumerate(contexts):
                if i:
                    peer.set_max_seq(context + steps + 1)
                if clock is not None:  # the same GPU: vkq's streaming reads raise its clock
                    raise_clock(ctx.device, clock)
                r = benchmark(peer, context, steps)
                nbytes = peer.bytes_per_step()
                yield Row("llama", f"{name} ctx={context}", f"{label} decode ({peer.step_mode})",
                          1e6 / r["decode_tok_s"], bytes=nbytes,
                          note=f"{r['decode_tok_s']:.1f} tok/s; GPU {r['decode_gpu_ms']:.3f} ms/token; "
                               f"{nbytes / 1e9:.3g} GB/token; {describe(peer)}; {agree}")
            peer.set_max_seq(prompt + 2)
            if clock is not None:
                raise_clock(ctx.device, clock)
            r = benchmark(peer, prompt, 1)
            yield Row("llama", f"{name} prompt={prompt}", f"{label} prefill (eager)",
                      1e6 / r["prefill_tok_s"], note=f"{r['prefill_tok_s']:.0f} tok/s; {describe(peer)}")
        except Exception as e:  # a tool: report the failure and go on to the next peer
            ctx.progress(f"{label} peer of {name} failed:\n{traceback.format_exc()}")
            yield Row("llama", name, label, float("nan"),
                      note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        finally:
            if peer is not None:
                peer.close()


def check_prompt(weights: LlamaWeights) -> list[int]:
    return [int(t) for t in np.random.default_rng(1).integers(0, weights.config.vocab, CHECK_PROMPT)]


def mean_positions(context: int, steps: int) -> float:
    """Positions attention reads per timed step, on average: context + 1 ... context + steps."""
    return context + (steps + 1) / 2


def describe(peer: Any) -> str:
    what = {"fp16": "HF LlamaForCausalLM", "int4": "HF LlamaForCausalLM, linears _weight_int4pack_mm"}
    parts = [what[peer.kind], str(peer.dtype).replace("torch.", ""), f"static cache {peer.max_seq}",
             "torch.compile" if peer.compiled else peer.compile_note]
    return ", ".join(p for p in parts if p)


def agreement(peer_logits: np.ndarray, vkq_logits: np.ndarray) -> str:
    """How far a peer's logits are from vkq's on the same prompt."""
    err = float(np.abs(peer_logits - vkq_logits).max() / np.abs(vkq_logits).max())
    same = int(np.argmax(peer_logits)) == int(np.argmax(vkq_logits))
    return f"logits vs vkq: {err:.1e} of their scale, argmax {'same' if same else 'differs'}"
