"""Rotary position embedding (RoPE) reference, in Hugging Face transformers' conventions.

Frequencies (transformers' "default" and "llama3" rope types), evaluated step by step in
float32 as transformers does on the CPU when it builds `inv_freq`:

    inv_freq[i] = 1 / theta ** (2i / d)                               i < d/2
    llama3: wavelen = 2 pi / inv_freq, with c = original_max_position_embeddings,
        wavelen <  c / high_freq_factor: inv_freq unchanged (high frequencies)
        wavelen >  c / low_freq_factor:  inv_freq / factor  (low frequencies)
        otherwise, s = (c / wavelen - low) / (high - low):
                   (1 - s) * inv_freq / factor + s * inv_freq

torch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar` (Tensor.__rdiv__), so
those divisions are a float32 reciprocal and a product here too; `tensor / scalar` is a true
float32 division. pow, cos and sin are evaluated in float64 and rounded once to float32
(torch's float32 pow/cos/sin are within an ulp of that).

Tables: angle[p, i] = float32(p * inv_freq[i]) (transformers' float32 product of positions
and frequencies), cos/sin of it, [max_positions, d/2]: transformers' `emb = cat(freqs, freqs)`
repeats the same half, so half a row is all a kernel needs.

Rotation (transformers' `rotate_half`), per head of d values, x1 = x[:d/2], x2 = x[d/2:]:

    out = x * cos + cat(-x2, x1) * sin,  i.e.  out1 = x1 cos - x2 sin,  out2 = x2 cos + x1 sin
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

f32 = np.float32
#: what scaling dicts must hold for rope_type "llama3" (transformers' rope_scaling keys)
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_inv_freq(head_dim: int, theta: float = 500000.0,
                  scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """float32 inverse frequencies [head_dim // 2] ("default", or "llama3" with `scaling`)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)
    powered = f32(theta).astype(np.float64) ** exponent.astype(np.float64)
    inv_freq = np.reciprocal(powered.astype(f32))
    if scaling is None:
        return inv_freq
    return _llama3(inv_freq, **{k: scaling[k] for k in LLAMA3_KEYS})


def _llama3(inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float,
            original_max_position_embeddings: int) -> np.ndarray:
    context = original_max_position_embeddings
    # Python floats in transformers, compared with float32 tensors as float32 numbers
    low_freq_wavelen = f32(context / low_freq_factor)
    high_freq_wavelen = f32(context / high_freq_factor)
    wavelen = np.reciprocal(inv_freq) * f32(2 * math.pi)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / f32(factor), inv_freq)
    smooth = (np.reciprocal(wavelen) * f32(context) - f32(low_freq_factor)) \
        / f32(high_freq_factor - low_freq_factor)
    smoothed = (f32(1) - smooth) * scaled / f32(factor) + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)


def rope_tables(head_dim: int, max_positions: int, theta: float = 500000.0,
                scaling: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), float32 [max_positions, head_dim // 2], for positions 0..max_positions-1."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    positions = np.arange(max_positions, dtype=np.int64).astype(f32)
    angle = (positions[:, None] * inv_freq[None, :]).astype(np.float64)
    return np.cos(angle).astype(f32), np.sin(angle).astype(f32)


def rope_reference(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos: int,
                   n_heads: int) -> np.ndarray:
    """RoPE of x float32 [T, n_heads * d] whose rows are positions pos..pos+T-1, with the
    tables of rope_tables; float32 math in transformers' order."""
    x = np.asarray(x, f32)
    t = x.shape[0]
    half = cos.shape[1]
    heads = x.reshape(t, n_heads, 2 * half)
    c = cos[pos: pos + t][:, None, :]
    s = sin[pos: pos + t][:, None, :]
    x1, x2 = heads[..., :half], heads[..., half:]
    out = np.concatenate([x1 * c + (-x2) * s, x2 * c + x1 * s], axis=-1)
    return out.reshape(x.shape)
