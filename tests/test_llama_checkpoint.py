"""Loading Hugging Face Llama folders (config.json + safetensors, read with numpy alone):
bfloat16 widening, the fused q/k/v and alternating gate/up rows, tied embeddings, a model
run from the loaded weights against the reference decoder, and a clear error for each thing
a folder can get wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vkq.models import safetensors
from vkq.models.llama import LlamaModel, LlamaWeights, config_from_hf
from vkq.models.safetensors import CheckpointError
from vkq.reference.llama import llama_reference

HF = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "intermediate_size": 96, "vocab_size": 97, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
      "hidden_act": "silu", "tie_word_embeddings": False}


def tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    lin = lambda n, k: (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)  # noqa: E731
    out = {"model.embed_tokens.weight": rng.standard_normal((v, h)).astype(np.float32),
           "model.norm.weight": (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out.update({p + "self_attn.q_proj.weight": lin(h, h), p + "self_attn.k_proj.weight": lin(kv, h),
                    p + "self_attn.v_proj.weight": lin(kv, h), p + "self_attn.o_proj.weight": lin(h, h),
                    p + "mlp.gate_proj.weight": lin(i, h), p + "mlp.up_proj.weight": lin(i, h),
                    p + "mlp.down_proj.weight": lin(h, i),
                    p + "input_layernorm.weight": (1 + 0.1 * rng.standard_normal(h)).astype(np.float32),
                    p + "post_attention_layernorm.weight": (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)})
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = lin(v, h)
    return out


def folder(tmp_path, cfg=HF, drop=(), replace=None, bf16=True):
    t = tensors(cfg)
    for name in drop:
        t.pop(name)
    t.update(replace or {})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    half = len(t) // 2  # two files, as sharded checkpoints are
    names = list(t)
    safetensors.write(tmp_path / "model-00001-of-00002.safetensors", {n: t[n] for n in names[:half]}, bf16)
    safetensors.write(tmp_path / "model-00002-of-00002.safetensors", {n: t[n] for n in names[half:]}, bf16)
    return tmp_path, t


def bf16(a: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even), as float32."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def test_bf16_widening_is_exact(tmp_path):
    a = np.array([1.0, -2.5, 3.14159, 1e-30, 65504.0, -0.0, np.inf], np.float32)
    safetensors.write(tmp_path / "t.safetensors", {"a": a}, bf16=True)
    f = safetensors.SafetensorsFile(tmp_path / "t.safetensors")
    assert f.dtype("a") == "BF16" and f.shape("a") == (7,)
    np.testing.assert_array_equal(f.float32("a"), bf16(a))


def test_loaded_weights_are_the_files(tmp_path):
    path, t = folder(tmp_path)
    w = LlamaWeights.from_hf(path)
    c = w.config
    assert (c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.vocab) == (64, 2, 4, 2, 16, 97)
    assert c.rope_scaling == (8.0, 1.0, 4.0, 64)
    np.testing.assert_array_equal(w.embed, bf16(t["model.embed_tokens.weight"]))
    np.testing.assert_array_equal(w.layers[1].mlp_norm, bf16(t["model.layers.1.post_attention_layernorm.weight"]))
    L = w.layers[0]
    qkv = L.qkv.dequantize()
    gu = L.gate_up.dequantize()
    q = bf16(t["model.layers.0.self_attn.q_proj.weight"])
    gate, up = (bf16(t[f"model.layers.0.mlp.{n}_proj.weight"]) for n in ("gate", "up"))
    step = lambda a: np.abs(a).max() / 7  # noqa: E731  (int4 symmetric: half a step per value)
    assert np.abs(qkv[:64] - q).max() <= step(q) / 2 + 1e-6
    assert np.abs(gu[0::2] - gate).max() <= step(gate) / 2 + 1e-6  # rows alternate
    assert np.abs(gu[1::2] - up).max() <= step(up) / 2 + 1e-6


def test_model_from_a_checkpoint_follows_the_reference(device, tmp_path):
    path, _ = folder(tmp_path)
    w = LlamaWeights.from_hf(path)
    model = LlamaModel(w, device, max_seq=32)
    try:
        prompt = [3, 50, 7, 96]
        logits = model.prefill(prompt)
        ref = llama_reference(w, prompt)[-1]
        np.testing.assert_allclose(logits, ref, rtol=0, atol=2e-4 * (np.abs(ref).max() + 1))
        nxt, logits = model.step(int(np.argmax(logits)))
        ref = llama_reference(w, prompt + [int(np.argmax(ref))])[-1]
        np.testing.assert_allclose(logits, ref, rtol=0, atol=2e-4 * (np.abs(ref).max() + 1))
    finally:
        model.close()


def test_tied_embeddings(tmp_path):
    cfg = dict(HF, tie_word_embeddings=True)
    path, t = folder(tmp_path, cfg)
    w = LlamaWeights.from_hf(path)
    assert w.lm_head.shape == (97, 64)
    assert np.abs(w.lm_head.dequantize() - w.embed).max() <= np.abs(w.embed).max() / 7


@pytest.mark.parametrize("change,message", [
    (dict(architectures=["MistralForCausalLM"], model_type="mistral"), "is not a Llama"),
    (dict(hidden_act="gelu"), "hidden_act = 'gelu'"),
    (dict(attention_bias=True), "attention_bias = True"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling type 'dynamic'"),
    (dict(num_attention_heads=5), "multiple of kv_heads"),
])
def test_unsupported_configs(tmp_path, change, message):
    cfg = dict(HF, **change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError if "multiple" not in message else ValueError, match=message):
        config_from_hf(tmp_path)


def test_bad_tensors(tmp_path):
    (tmp_path / "a").mkdir()
    path, _ = folder(tmp_path / "a", drop=["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        LlamaWeights.from_hf(path)
    (tmp_path / "b").mkdir()
    path, _ = folder(tmp_path / "b", replace={"model.norm.weight": np.ones(63, np.float32)})
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \[63\], the config says \[64\]"):
        LlamaWeights.from_hf(path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(json.dumps(HF))
    with pytest.raises(CheckpointError, match="no \\*.safetensors files"):
        LlamaWeights.from_hf(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        LlamaWeights.from_hf(tmp_path / "c")


def test_generate_command_on_a_checkpoint(device, tmp_path):
    import os
    import subprocess
    import sys
    path, _ = folder(tmp_path)
    run = subprocess.run([sys.executable, "-m", "vkq", "generate", "--checkpoint", str(path),
                          "--prompt-ids", "3,50,7", "--tokens", "4"], capture_output=True, text=True,
                         env=dict(os.environ, VKQ_VALIDATION="0"), timeout=300)
    assert run.returncode == 0, run.stderr
    ids = [int(t) for t in run.stdout.split("generated:")[1].split()[0].split(",")]
    model = LlamaModel(LlamaWeights.from_hf(path), device, max_seq=16)
    try:
        first = int(np.argmax(model.prefill([3, 50, 7])))
        assert ids == [first] + model.generate(first, 3)
    finally:
        model.close()


def test_generate_with_text_through_the_tokenizer(device, tmp_path):
    import os
    import subprocess
    import sys
    from tokenizers import Tokenizer, models, pre_tokenizers
    path, _ = folder(tmp_path)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    env = dict(os.environ, VKQ_VALIDATION="0")
    cmd = [sys.executable, "-m", "vkq", "generate", "--checkpoint", str(path), "--tokens", "4"]
    text = subprocess.run(cmd + ["--prompt", "w3 w50 w7"], capture_output=True, text=True, env=env,
                          timeout=300)
    ids = subprocess.run(cmd + ["--prompt-ids", "3,50,7"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert text.returncode == 0 and ids.returncode == 0, text.stderr + ids.stderr
    generated = lambda out: out.split("generated:")[1].split()[0]  # noqa: E731
    assert generated(text.stdout) == generated(ids.stdout)
    want = tok.decode([int(t) for t in generated(ids.stdout).split(",")])
    assert f"text: {want}" in text.stdout
    (path / "tokenizer.json").unlink()
    err = subprocess.run(cmd + ["--prompt", "w3"], capture_output=True, text=True, env=env, timeout=300)
    assert err.returncode != 0 and "has no tokenizer.json; pass --prompt-ids" in err.stderr
    assert "Traceback" not in err.stderr
