"""Sampling the next token from logits on the host (numpy): temperature, top-k, top-p.

    sampler = Sampler(temperature=0.8, top_k=40, top_p=0.95, seed=0)
    tokens = model.generate(token, 32, sampler=sampler)

Greedy decoding needs none of this: the decode graph's argmax runs on the device and only
the token comes back. Sampling reads the step's logits (a vocabulary row of float32 per
token, which the decode step downloads anyway) and draws here, in the order Hugging Face's
logits processors use: divide by the temperature, keep the `top_k` largest logits (ties
with the k-th kept), softmax, keep the smallest set of most likely tokens whose
probability reaches `top_p` (the nucleus; the most likely token always stays), renormalize
and draw with a seeded numpy Generator (the same seed and logits give the same tokens).
"""
from __future__ import annotations

import math

import numpy as np


class Sampler:
    """Draws token ids from logits (module docstring). Arguments are checked here, so a
    wrong one fails before any model work: temperature > 0, top_k >= 1 or None (off),
    0 < top_p <= 1."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                 seed: int | None = None):
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (greedy decoding is no "
                             f"sampler), got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.temperature = float(temperature)
        self.top_k = None if top_k is None else int(top_k)
        self.top_p = float(top_p)
        self.rng = np.random.default_rng(seed)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution a draw uses: float64, summing to 1, zero outside top-k / top-p."""
        z = np.asarray(logits, np.float64)
        if z.ndim != 1 or not len(z):
            raise ValueError(f"logits must be a non-empty 1-D array, got shape {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits must be finite (found NaN or Inf)")
        z = z / self.temperature
        if self.top_k is not None and self.top_k < len(z):
            kth = np.partition(z, len(z) - self.top_k)[len(z) - self.top_k]
            z = np.where(z >= kth, z, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1:
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]  # probability of the more likely tokens
            p[order[before >= self.top_p]] = 0
            p /= p.sum()
        return p

    def __call__(self, logits: np.ndarray) -> int:
        """One token id drawn from `probabilities(logits)`."""
        p = self.probabilities(logits)
        candidates = np.flatnonzero(p)
        cdf = np.cumsum(p[candidates])
        i = np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")
        return int(candidates[min(i, len(candidates) - 1)])  # u * cdf[-1] may round up to cdf[-1]
