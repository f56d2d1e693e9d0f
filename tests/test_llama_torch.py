"""The PyTorch peer of the Llama benchmark (vkq.bench.llama_torch) is the same model as vkq's.

On CPU the peer runs in float32 and eagerly, by the same code the GPU runs: transformers'
LlamaForCausalLM holding a LlamaWeights' values, dequantized ("fp16" kind) or through
PyTorch's int4 kernel on the same int4 values ("int4"), must give the numpy reference
decoder's logits over a prompt and greedy steps through its static cache. (CUDA graphs,
fp16/bf16 and the CUDA int4 packer run only on the GPU: the bench checks the graph against
an eager step and reports each peer's logits against vkq's.) Skipped without torch and
transformers.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vkq.models.llama import CONFIGS, LlamaWeights
from vkq.reference.llama import llama_reference

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vkq.bench.llama_torch import KINDS, TorchLlama, hf_llama  # noqa: E402
from vkq.bench.torch_peer import int4pack, int4pack_mm  # noqa: E402
from test_llama import limits_are_errors  # noqa: E402

#: the tiny config with a vocabulary PyTorch's CPU int4 kernel takes (N % 16 == 0)
TINY = dataclasses.replace(CONFIGS["tiny"], vocab=112)
PROMPT = [5, 17, 3, 44, 90]
STEPS = 8


@pytest.fixture(scope="module")
def weights():
    return LlamaWeights.random(TINY, seed=3)


def close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 against float64, as tests/test_llama.py bounds vkq's own logits: sums of a few
    hundred products through 2 layers, each within a few float32 ulps of the scale."""
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * (np.abs(want).max() + 1))


def follow_the_reference(peer: TorchLlama, w: LlamaWeights) -> None:
    """Prefill, then greedy steps: every step's logits are the reference decoder's."""
    logits = peer.prefill(PROMPT)
    close(logits, llama_reference(w, PROMPT)[-1])
    tokens, token = list(PROMPT), int(np.argmax(logits))
    for _ in range(STEPS):
        tokens.append(token)
        nxt, logits = peer.step(token)
        logits = logits.numpy()
        close(logits, llama_reference(w, tokens)[-1])
        assert nxt == int(np.argmax(logits))
        token = nxt
    assert peer.pos == len(PROMPT) + STEPS


@pytest.mark.parametrize("kind", KINDS)
def test_the_peer_computes_the_reference_logits(weights, kind):
    peer = TorchLlama(weights, "cpu", kind, max_seq=32)
    try:
        assert peer.step_mode == "eager" and peer.last_step_gpu_ns() is None
        follow_the_reference(peer, weights)
        peer.reset()  # a second context on the same cache starts from scratch
        follow_the_reference(peer, weights)
    finally:
        peer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_shared_host_layers_get_memory_of_their_own(kind):
    """random_repeated holds one layer object for all layers; the peer converts it once and
    gives every layer its own copy (the bytes a token reads must be a real model's)."""
    w = LlamaWeights.random_repeated(dataclasses.replace(TINY, layers=3), seed=4)
    assert w.layers[0] is w.layers[2]
    peer = TorchLlama(w, "cpu", kind, max_seq=16)
    try:
        tensors = [list(layer.self_attn.q_proj.state_dict().values()) for layer in peer.model.model.layers]
        for a, b in zip(tensors[0], tensors[2]):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
        linears = {n: t for n, t in peer.model.state_dict().items() if "proj" in n or "lm_head" in n}
        assert len(linears) == (3 * 7 + 1) * (2 if kind == "int4" else 1)  # packed + scales_and_zeros
        assert peer.weight_bytes == sum(t.numel() * t.element_size() for t in linears.values())
        close(peer.prefill(PROMPT), llama_reference(w, PROMPT)[-1])
    finally:
        peer.close()


def test_int4_operands_stand_for_the_quantized_values():
    rng = np.random.default_rng(0)
    n, k, gs = 32, 128, 32
    q = torch.from_numpy(rng.integers(-8, 8, (n, k), dtype=np.int8))
    s = torch.from_numpy(rng.uniform(0.01, 0.02, (n, k // gs)).astype(np.float32))
    z = torch.from_numpy(rng.uniform(-0.1, 0.1, (n, k // gs)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((3, k)).astype(np.float32))
    for zeros in (None, z):
        w = q.float() * s.repeat_interleave(gs, 1) + (0 if zeros is None else zeros.repeat_interleave(gs, 1))
        packed, sz = int4pack(q, s, zeros, torch.float32)
        assert sz.shape == (k // gs, n, 2)
        got = int4pack_mm(x, packed, gs, sz)
        # float32 sums of 128 products of size ~1 * 0.1: a few ulps of ~1
        torch.testing.assert_close(got, x @ w.T, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="N % 16 == 0"):
        int4pack(q[:24], s[:24], None, torch.float32)


def test_the_model_without_a_cache_matches_every_position(weights):
    """scripts/compare_transformers.py runs the model over a whole sequence (eager attention)."""
    model, _ = hf_llama(weights, "cpu", "fp16", attn="eager")
    tokens = PROMPT + [7, 8, 9]
    with torch.no_grad():
        got = model(torch.tensor([tokens])).logits[0].numpy()
    ref = llama_reference(weights, tokens)
    for g, r in zip(got, ref):
        close(g, r)


def test_bad_input_is_a_clear_error(weights, device):
    with pytest.raises(ValueError, match="kind must be one of"):
        TorchLlama(weights, "cpu", "int8")
    peer = TorchLlama(weights, "cpu", "fp16", max_seq=4)
    try:
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 112\)"):
            peer.step(-1)  # checked on the host: on CUDA it would be a device-side assert
        limits_are_errors(peer, 112)
    finally:
        peer.close()
    on_device = weights.to_device(device)
    try:
        with pytest.raises(TypeError, match="int4 QuantizedWeights on the host"):
            TorchLlama(on_device, "cpu", "fp16")
    finally:
        on_device.release()


def test_the_suite_rows_on_cpu(device, weights):
    """The llama suite's peer path end to end (peers on the CPU, as the tests can run it):
    rows for both kinds, bytes per token, and each peer's logits agreeing with vkq's."""
    from vkq.bench import BenchContext
    from vkq.bench.suites.llama import torch_rows, vkq_rows
    messages = []
    ctx = BenchContext(device=device, roofline_gbps=1.0, quick=True, progress=messages.append)
    rows, gen = [], vkq_rows(ctx, "tiny", weights, 8, (8, 16), 2)
    while True:
        try:
            rows.append(next(gen))
        except StopIteration as stop:
            vkq_logits = stop.value
            break
    rows += list(torch_rows(ctx, "tiny", weights, 8, (8, 16), 2, vkq_logits,
                            [(kind, False) for kind in KINDS], device="cpu"))
    kernels = [r.kernel for r in rows]
    assert kernels == ["decode (graph replay)"] * 2 + ["prefill (eager)"] + [
        k for kind in KINDS for k in [f"torch {kind} decode (eager)"] * 2 + [f"torch {kind} prefill (eager)"]]
    assert all(np.isfinite(r.us) and r.us > 0 for r in rows), [r.note for r in rows]
    decode = [r for r in rows if "decode" in r.kernel]
    assert all(r.bytes > 0 and "GB/token" in r.note for r in decode)
    assert all("argmax same" in r.note for r in decode if r.kernel.startswith("torch"))
    # static caches sized per context: the longer context's peer reads more
    torch_fp16 = [r for r in decode if r.kernel.startswith("torch fp16")]
    assert torch_fp16[1].bytes > torch_fp16[0].bytes


def test_the_compiled_step_is_the_same_model(weights, monkeypatch):
    """compile=True steps through torch.compile (dynamo's whole-step trace; its "eager"
    backend here, as inductor's code generation takes minutes on this machine), again for
    each new cache; a compile that fails leaves the plain step and says why."""
    real, calls = torch.compile, []

    def compile_eager(fn, **kwargs):
        compiled = real(fn, backend="eager", **kwargs)

        def counted():
            calls.append(1)
            return compiled()
        return counted
    monkeypatch.setattr(torch, "compile", compile_eager)
    peer = TorchLlama(weights, "cpu", "fp16", max_seq=32, compile=True)
    try:
        assert peer.compiled and not peer.compile_note
        follow_the_reference(peer, weights)
        peer.set_max_seq(20)
        follow_the_reference(peer, weights)
        assert len(calls) == 2 * (STEPS + 1)  # every step, and one compiling call per cache
    finally:
        peer.close()

    def broken(fn, **kwargs):
        def fail():
            raise RuntimeError("no compiler here")
        return fail
    monkeypatch.setattr(torch, "compile", broken)
    peer = TorchLlama(weights, "cpu", "fp16", max_seq=32, compile=True)
    try:
        assert not peer.compiled
        assert peer.compile_note == "torch.compile failed: RuntimeError: no compiler here"
        follow_the_reference(peer, weights)
    finally:
        peer.close()
