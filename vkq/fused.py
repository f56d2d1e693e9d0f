"""Fused linear layers: several weights that read the same input, run as one dispatch.

    qkv = vkq.fuse_linear([wq, wk, wv])                   # q, k, v = vkq.linear(h, qkv)
    gate_up = vkq.fuse_linear([wg, wu], epilogue="silu_mul")   # vkq.linear(h, gate_up) = silu(h Wg^T) * (h Wu^T)

The weights are concatenated along N once (host side, then packed like any weight), so a
decode step reads the shared input once and pays one dispatch instead of three (or two plus
the elementwise op).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vkq.quantized_weight import QuantizedWeight

EPILOGUES = (None, "silu_mul")


class FusedWeight:
    """One weight `[sum N_i, K]` that stands for several linear layers (module docstring).

    `weight` is the fused weight: a QuantizedWeight, or one already on the device (a
    prepacked Q4gswWeight). `parts` are the N_i; `epilogue` None (one output per part; the
    parts' rows follow each other) or "silu_mul" (two equal parts, gate and up, whose rows
    alternate: gate 0, up 0, gate 1, ...; one output silu(gate) * up). Build it with
    `fuse_linear` from the separate weights.
    """

    def __init__(self, weight: Any, parts: Sequence[int], epilogue: str | None = None):
        self.parts = tuple(int(p) for p in parts)
        if epilogue not in EPILOGUES:
            raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
        if len(self.parts) < 2 or min(self.parts) < 1:
            raise ValueError(f"a fused weight has two or more non-empty parts, got {self.parts}")
        if sum(self.parts) != weight.shape[0]:
            raise ValueError(f"parts {self.parts} do not add up to the weight's N = {weight.shape[0]}")
        if epilogue == "silu_mul" and (len(self.parts) != 2 or self.parts[0] != self.parts[1]):
            raise ValueError(f"epilogue='silu_mul' fuses gate and up of equal size, got parts {self.parts}")
        self.weight = weight
        self.epilogue = epilogue

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape

    def release(self) -> None:
        """Free the device copies of the fused weight."""
        release = getattr(self.weight, "release", None) or self.weight.close
        release()

    def __repr__(self) -> str:
        return f"FusedWeight(parts={self.parts}, epilogue={self.epilogue!r}, {self.weight!r})"


def fuse_linear(weights: Sequence[QuantizedWeight], epilogue: str | None = None) -> FusedWeight:
    """Fuse linear layers that share their input: their weights are concatenated along N
    (they must agree on bits, group size, symmetry and K)."""
    weights = list(weights)
    if not all(isinstance(w, QuantizedWeight) for w in weights):
        raise TypeError("fuse_linear takes vkq.QuantizedWeight objects (logical weights)")
    if len(weights) < 2:
        raise ValueError("fuse_linear needs at least two weights")
    first = weights[0]
    for i, w in enumerate(weights[1:], 1):
        if (w.bits, w.group_size, w.symmetric, w.shape[1]) != \
                (first.bits, first.group_size, first.symmetric, first.shape[1]):
            raise ValueError(f"weight {i} differs from weight 0 in bits, group size, symmetry "
                             f"or K: fused weights must agree on all four")
    if epilogue == "silu_mul" and (len(weights) != 2 or weights[0].shape != weights[1].shape):
        raise ValueError(f"epilogue='silu_mul' fuses gate and up of equal size, got "
                         f"{[w.shape for w in weights]}")
    # silu_mul: gate and up rows alternate (gate j, up j), so that one GEMV workgroup holds
    # both channels of an output; parts otherwise follow each other
    join = _interleave if epilogue == "silu_mul" else np.concatenate
    zeros = None if first.symmetric else join([w.zeros for w in weights])
    cat = QuantizedWeight(join([w.q for w in weights]), join([w.scales for w in weights]), zeros,
                          bits=first.bits, group_size=first.group_size if first.bits == 4 else None)
    return FusedWeight(cat, [w.shape[0] for w in weights], epilogue)


def _interleave(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of equally shaped arrays alternating: a[0], b[0], a[1], b[1], ..."""
    return np.stack(arrays, axis=1).reshape(-1, *arrays[0].shape[1:])
