"""Fused linear layers: several weights that read the same input, run as one dispatch.

    qkv = vkq.fuse_linear([wq, wk, wv])                   # q, k, v = vkq.linear(h, qkv)
    gate_up = vkq.fuse_linear([wg, wu], epilogue="silu_mul")   # vkq.linear(h, gate_up) = silu(h Wg^T) * (h Wu^T)

The weights are concatenated along N once (host side, then packed like any weight), so a
decode step reads the shared input once and pays one dispatch instead of three (or two plus
the elementwise op).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vkq.quantized_weight import QuantizedWeight

EPILOGUES = (None, "silu_mul")


class FusedWeight:
    """Weights `[N_i, K]` run as one `[sum N_i, K]` linear (see the module docstring).

    `parts` are the N_i; `epilogue` None (one output per part) or "silu_mul" (two equal parts,
    gate then up: one output silu(gate) * up). `weight` is the concatenated QuantizedWeight.
    """

    def __init__(self, weights: Sequence[QuantizedWeight], epilogue: str | None = None):
        weights = list(weights)
        if len(weights) < 2:
            raise ValueError("fuse_linear needs at least two weights")
        if not all(isinstance(w, QuantizedWeight) for w in weights):
            raise TypeError("fuse_linear takes vkq.QuantizedWeight objects (logical weights)")
        if epilogue not in EPILOGUES:
            raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
        first = weights[0]
        for i, w in enumerate(weights[1:], 1):
            same = (w.bits, w.group_size, w.symmetric, w.shape[1]) == \
                   (first.bits, first.group_size, first.symmetric, first.shape[1])
            if not same:
                raise ValueError(f"weight {i} differs from weight 0 in bits, group size, symmetry "
                                 f"or K: fused weights must agree on all four")
        self.parts = tuple(int(w.shape[0]) for w in weights)
        if epilogue == "silu_mul" and (len(self.parts) != 2 or self.parts[0] != self.parts[1]):
            raise ValueError(f"epilogue='silu_mul' fuses gate and up of equal size, got parts {self.parts}")
        self.epilogue = epilogue
        zeros = None if first.symmetric else np.concatenate([w.zeros for w in weights])
        self.weight = QuantizedWeight(np.concatenate([w.q for w in weights]),
                                      np.concatenate([w.scales for w in weights]), zeros,
                                      bits=first.bits,
                                      group_size=first.group_size if first.bits == 4 else None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape

    def release(self) -> None:
        """Free the device copies of the fused weight."""
        self.weight.release()

    def __repr__(self) -> str:
        return f"FusedWeight(parts={self.parts}, epilogue={self.epilogue!r}, {self.weight!r})"


def fuse_linear(weights: Sequence[QuantizedWeight], epilogue: str | None = None) -> FusedWeight:
    """Fuse linear layers that share their input (see FusedWeight)."""
    return FusedWeight(weights, epilogue)
