"""attention reference: causal grouped-query attention of T query rows over a KV cache.

q `[T, n_heads * D]` holds positions pos .. pos + T - 1; row t attends cache rows
0 .. pos + t (inclusive). Query head h reads kv head h // (n_heads // n_kv_heads);
scores are q . k / sqrt(D), softmax over the attended rows, output the weighted sum of v.
float64 math, float32 result.
"""
from __future__ import annotations

import numpy as np


def attention_reference(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int,
                        n_heads: int, n_kv_heads: int) -> np.ndarray:
    q = np.asarray(q, np.float64)
    rows = q.shape[0]
    d = q.shape[1] // n_heads
    group = n_heads // n_kv_heads
    length = pos + rows
    k = np.asarray(k_cache, np.float64)[:length].reshape(length, n_kv_heads, d)
    v = np.asarray(v_cache, np.float64)[:length].reshape(length, n_kv_heads, d)
    k = np.repeat(k, group, axis=1)   # [L, n_heads, D]: head h sees kv head h // group
    v = np.repeat(v, group, axis=1)
    out = np.empty((rows, n_heads, d))
    for t in range(rows):
        seen = pos + t + 1
        s = np.einsum("hd,lhd->hl", q[t].reshape(n_heads, d), k[:seen]) / np.sqrt(d)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[t] = np.einsum("hl,lhd->hd", p, v[:seen]) / p.sum(axis=1, keepdims=True)
    return out.reshape(rows, n_heads * d).astype(np.float32)
