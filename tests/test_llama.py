"""The Llama decoder (vkq.models.llama) on the tiny config against the numpy reference
decoder: prefill logits, then greedy decode steps (one graph replay each) whose logits and
tokens follow the reference over the whole sequence."""
from __future__ import annotations

import numpy as np
import pytest

from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights
from vkq.reference.llama import llama_reference

PROMPT = [5, 17, 3, 44, 90]
STEPS = 16


@pytest.fixture(scope="module")
def tiny():
    return LlamaWeights.random(CONFIGS["tiny"], seed=3)


def close(got: np.ndarray, want: np.ndarray) -> None:
    """fp32 kernels against float64: a bound relative to the logits' scale (sums of a few
    hundred products through 2 layers, each within a few fp32 ulps)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * (np.abs(want).max() + 1))


def test_prefill_and_decode_follow_the_reference(device, tiny):
    model = LlamaModel(tiny, device, max_seq=64)
    try:
        logits = model.prefill(PROMPT)
        ref = llama_reference(tiny, PROMPT)
        close(logits, ref[-1])
        tokens = list(PROMPT)
        token = int(np.argmax(logits))
        for _ in range(STEPS):
            tokens.append(token)
            nxt, logits = model.step(token)
            ref = llama_reference(tiny, tokens)[-1]
            close(logits, ref)
            assert nxt == int(np.argmax(logits))
            top2 = np.sort(ref)[-2:]
            if top2[1] - top2[0] > 1e-3 * (np.abs(ref).max() + 1):  # a clear winner
                assert nxt == int(np.argmax(ref))
            token = nxt
        assert model.pos == len(PROMPT) + STEPS
    finally:
        model.close()


def test_decode_from_scratch_equals_prefill(device, tiny):
    """Positions written one by one by the decode graph give the same logits as a prefill."""
    model = LlamaModel(tiny, device, max_seq=16)
    try:
        for t in PROMPT[:-1]:
            model.step(t)
        _, logits = model.step(PROMPT[-1])
        close(logits, llama_reference(tiny, PROMPT)[-1])
    finally:
        model.close()


def test_context_limits_and_bad_tokens(device, tiny):
    model = LlamaModel(tiny, device, max_seq=4)
    try:
        with pytest.raises(ValueError, match="past the KV cache's 4"):
            model.prefill([1, 2, 3, 4, 5])
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
            model.prefill([1, 200])
        model.prefill([1, 2, 3])
        model.step(4)
        with pytest.raises(ValueError, match="past the KV cache"):
            model.step(5)
    finally:
        model.close()
