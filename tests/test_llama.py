"""The Llama decoder (vkq.models.llama) on the tiny config against the numpy reference
decoder: prefill logits, then greedy decode steps (one graph replay each) whose logits and
tokens follow the reference over the whole sequence; weights put on the device with a copy
per layer; sampling (vkq.models.sampling) and the generate command's sampling flags and
loading progress; the bench's imports without torch."""
from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from vkq.__main__ import ProgressLine
from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights
from vkq.models.sampling import Sampler
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


def test_a_step_without_logits_gives_the_same_token(device, tiny):
    """step(logits=False) leaves the logits on the device and returns the same greedy token."""
    model = LlamaModel(tiny, device, max_seq=16)
    try:
        model.prefill(PROMPT)
        pos = model.pos
        with_logits = model.step(7)
        model.pos = pos  # the same position again: the same cache writes
        nxt, logits = model.step(7, logits=False)
        assert logits is None and nxt == with_logits[0] == int(np.argmax(with_logits[1]))
    finally:
        model.close()


def limits_are_errors(model, vocab: int) -> None:
    """A model with max_seq=4 (LlamaModel, or the PyTorch peer): a prompt or a step past the
    cache and a token id outside the vocabulary are ValueErrors saying so."""
    with pytest.raises(ValueError, match="past the KV cache's 4"):
        model.prefill([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {vocab}\)"):
        model.prefill([1, vocab + 3])
    model.prefill([1, 2, 3])
    model.step(4)
    with pytest.raises(ValueError, match="past the KV cache"):
        model.step(5)


def test_context_limits_and_bad_tokens(device, tiny):
    model = LlamaModel(tiny, device, max_seq=4)
    try:
        limits_are_errors(model, 97)
    finally:
        model.close()


# -- weights on the device --------------------------------------------------------------------
def test_repeated_layers_get_device_memory_of_their_own(device):
    """random_repeated shares one host layer; to_device gives each layer its own packed copy
    (a token reads every layer's bytes, as in a real model) with the same values."""
    config = dataclasses.replace(CONFIGS["tiny"], layers=3)
    host = LlamaWeights.random_repeated(config, seed=2)
    assert host.layers[0] is host.layers[2] and len(host.layers) == 3
    seen = []
    weights = host.to_device(device, progress=lambda *a: seen.append(a))
    assert seen == [("uploading", i, 4) for i in range(1, 5)]
    try:
        handles = {id(w.weight) for w in weights.linears()}
        assert len(handles) == len(weights.linears()) == 3 * 4 + 1
        model = LlamaModel(weights, device, max_seq=16)
        try:
            close(model.prefill(PROMPT), llama_reference(host, PROMPT)[-1])
        finally:
            model.close()
    finally:
        weights.release()
    assert all(w.closed for w in weights.linears())


# -- sampling ---------------------------------------------------------------------------------
LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def test_sampler_distribution_follows_temperature_top_k_and_top_p():
    p = Sampler().probabilities(LOGITS)
    np.testing.assert_allclose(p, [0.5, 0.3, 0.15, 0.05], rtol=1e-12)
    hot = Sampler(temperature=2.0).probabilities(LOGITS)  # p ** (1 / T), renormalized
    np.testing.assert_allclose(hot, np.sqrt(p) / np.sqrt(p).sum(), rtol=1e-12)
    two, three = np.array([0.5, 0.3, 0, 0]) / 0.8, np.array([0.5, 0.3, 0.15, 0]) / 0.95
    np.testing.assert_allclose(Sampler(top_k=2).probabilities(LOGITS), two, rtol=1e-12)
    np.testing.assert_allclose(Sampler(top_p=0.75).probabilities(LOGITS), two, rtol=1e-12)
    np.testing.assert_allclose(Sampler(top_p=0.85).probabilities(LOGITS), three, rtol=1e-12)
    assert Sampler(top_p=0.1).probabilities(LOGITS)[0] == 1  # the most likely token always stays
    ties = np.array([1.0, 3.0, 3.0, 2.0])
    assert np.count_nonzero(Sampler(top_k=1).probabilities(ties)) == 2  # ties with the k-th stay


def test_sampler_draws_follow_the_distribution():
    """20000 draws: each token's count within 5 standard deviations of n p (a fixed seed, so
    the test is deterministic; a sampler drawing from the wrong distribution fails it)."""
    n, sampler = 20000, Sampler(temperature=1.5, top_k=3, seed=11)
    p = sampler.probabilities(LOGITS)
    counts = np.bincount([sampler(LOGITS) for _ in range(n)], minlength=4)
    assert counts[3] == 0
    assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1), (counts, n * p)


def test_sampler_seed_and_bad_arguments():
    logits = np.random.default_rng(0).standard_normal(97)

    def draws(seed: int) -> list[int]:
        sampler = Sampler(seed=seed)
        return [sampler(logits) for _ in range(20)]
    assert draws(5) == draws(5) and draws(5) != draws(6)
    assert Sampler(top_k=1, seed=1)(logits) == int(np.argmax(logits))
    for kwargs, message in [({"temperature": 0}, "temperature must be"),
                            ({"temperature": float("nan")}, "temperature must be"),
                            ({"top_k": 0}, "top_k must be"), ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
                            ({"top_p": 1.5}, "top_p must be")]:
        with pytest.raises(ValueError, match=message):
            Sampler(**kwargs)
    with pytest.raises(ValueError, match="finite"):
        Sampler()(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        Sampler()(np.zeros((2, 3)))


def test_generate_samples_from_each_steps_logits(device, tiny):
    """generate(sampler=...) draws every token from that step's logits: replaying the same
    tokens step by step and drawing from their logits with a fresh sampler of the same seed
    gives the same tokens."""
    model = LlamaModel(tiny, device, max_seq=32)
    try:
        first = int(np.argmax(model.prefill(PROMPT)))
        sampled = model.generate(first, 10, Sampler(temperature=3.0, seed=7))
        model.reset()
        model.prefill(PROMPT)
        again, token = Sampler(temperature=3.0, seed=7), first
        for want in sampled:
            _, logits = model.step(token)
            assert again(logits) == want
            token = want
        model.reset()
        model.prefill(PROMPT)
        assert sampled != model.generate(first, 10)  # hot sampling leaves the greedy path
    finally:
        model.close()


# -- the command line and the bench's imports ------------------------------------------------
def vkq_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vkq", *args], capture_output=True, text=True,
                          env=dict(os.environ, VKQ_VALIDATION="0"), timeout=300)


def test_generate_samples_with_a_seed(tmp_path):
    from test_llama_checkpoint import folder
    path, _ = folder(tmp_path)
    args = ["generate", "--checkpoint", str(path), "--prompt-ids", "3,50,7", "--tokens", "12"]
    ids = lambda r: r.stdout.split("generated:")[1].split()[0]  # noqa: E731
    runs = [vkq_cli(*args, "--temperature", "2", "--top-k", "40", "--seed", s) for s in ("1", "1", "2")]
    greedy = vkq_cli(*args)
    assert all(r.returncode == 0 for r in runs + [greedy]), [r.stderr for r in runs + [greedy]]
    assert ids(runs[0]) == ids(runs[1]) and ids(runs[0]) != ids(runs[2]) and ids(runs[0]) != ids(greedy)
    # the loading progress: one finished line per stage on a non-terminal stderr
    lines = greedy.stderr.splitlines()
    assert [line.split(" [")[0] for line in lines] == ["quantizing", "uploading"], greedy.stderr
    assert "3/3" in lines[0] and "\r" not in greedy.stderr


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0.5"], "--temperature samples a generated text: it needs --checkpoint"),
    (["--top-k", "3", "--seed", "1"], "--top-k/--seed: only for sampling; add --temperature"),
    (["--top-p", "1.5"], "argument --top-p: expected a number in (0, 1], got '1.5'"),
    (["--temperature", "-1"], "argument --temperature: expected a number >= 0, got '-1'"),
])
def test_generate_sampling_flags_errors(args, message):
    r = vkq_cli("generate", *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert message in r.stderr


def test_progress_line_redraws_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    out = Terminal()
    bar = ProgressLine(out)
    for i in range(1, 4):
        bar("quantizing", i, 3)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 3
    assert text.rstrip("\n").split("\r")[-1].startswith("quantizing [" + "#" * ProgressLine.WIDTH + "] 3/3")


def test_the_bench_without_compare_torch_does_not_import_torch():
    code = ("import sys, vkq.__main__, vkq.bench.runner; from vkq.bench import suites; suites.load(); "
            "import vkq.bench.llama_torch; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]; "
            "assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_generate_refuses_token_ids_outside_the_vocabulary(tmp_path):
    from test_llama_checkpoint import folder
    path, _ = folder(tmp_path)
    r = vkq_cli("generate", "--checkpoint", str(path), "--prompt-ids", "3,97")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].endswith("--prompt-ids: token ids must be in [0, 97), got [3, 97]")


def test_generate_random_weights_command():
    """The issue's command, as CI runs it: random int4 weights, prefill and decode timed."""
    r = vkq_cli("generate", "--config", "tiny", "--random-weights", "--tokens", "16")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "tiny with random int4 g32 symmetric weights" in lines[0], r.stdout
    assert lines[1].startswith("prefill: 16 tokens, ") and lines[1].endswith(" tok/s"), r.stdout
    assert lines[2].startswith("decode:  16 tokens, ") and "ms per token" in lines[2], r.stdout
    r = vkq_cli("generate", "--config", "tiny", "--tokens", "4", "--group-size", "16", "--asymmetric")
    assert r.returncode == 0 and "random int4 g16 asymmetric weights" in r.stdout, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--random-weights", "--checkpoint", "x"], "--random-weights and --checkpoint exclude each other"),
    (["--group-size", "48"], "--group-size 48 must divide tiny's widths"),
])
def test_generate_weight_flags_errors(args, message):
    r = vkq_cli("generate", "--config", "tiny", *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert message in r.stderr
