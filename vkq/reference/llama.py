"""Reference Llama decoder: the math of vkq.models.llama in numpy, for one token sequence.

Linear layers in float64 on the dequantized weights, the other ops through their own
references (rms_norm, RoPE in transformers' float32 order, causal grouped-query attention,
silu(gate) * up). Returns float64 logits for every position; tests compare vkq's with a
tolerance and its greedy tokens with these.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vkq.reference.attention import attention_reference
from vkq.reference.elementwise import silu_mul_reference
from vkq.reference.rms_norm import rms_norm_reference
from vkq.reference.rope import rope_reference, rope_tables


def _linear(x: np.ndarray, w: Any) -> np.ndarray:
    return np.asarray(x, np.float64) @ w.dequantize().astype(np.float64).T


def llama_reference(weights: Any, tokens: Sequence[int]) -> np.ndarray:
    """float64 logits [len(tokens), vocab] of a vkq.models.llama.LlamaWeights (QuantizedWeights)."""
    c = weights.config
    tokens = np.asarray(tokens, np.int64)
    n = len(tokens)
    cos, sin = rope_tables(c.head_dim, n, c.rope_theta, c.scaling_dict())
    x = weights.embed[tokens].astype(np.float32)
    for L in weights.layers:
        h = rms_norm_reference(x, L.attn_norm, c.rms_eps)
        qkv = _linear(h, L.qkv).astype(np.float32)
        q, k, v = np.split(qkv, [c.q_dim, c.q_dim + c.kv_dim], axis=1)
        q = rope_reference(q, cos, sin, 0, c.heads)
        k = rope_reference(k, cos, sin, 0, c.kv_heads)
        a = attention_reference(q, k, v, 0, c.heads, c.kv_heads)
        x = (x + _linear(a, L.o)).astype(np.float32)
        h = rms_norm_reference(x, L.mlp_norm, c.rms_eps)
        gu = _linear(h, L.gate_up)
        x = (x + _linear(silu_mul_reference(gu[:, 0::2], gu[:, 1::2]), L.down)).astype(np.float32)
    return _linear(rms_norm_reference(x, weights.final_norm, c.rms_eps), weights.lm_head)
