"""Public ops a Llama decoder needs besides linears and norms: `vkq.rope` (rotary position
embedding from a `vkq.RopeTable`) and `vkq.argmax` (greedy sampling).

Each takes numpy arrays (result: numpy), DeviceTensors (result: a DeviceTensor, returned
without waiting for the GPU) or, inside `with vkq.graph() as g:`, graph values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.execute import run_op
from vkq.ops.common import float_tensor
from vkq.ops.positions import check_position
from vkq.rope_table import RopeTable
from vkq.runtime import Device

Tensor = Any  # numpy array | vkq.DeviceTensor | vkq.graph.Value

__all__ = ["RopeTable", "argmax", "rope"]


def rope(x: Tensor, table: RopeTable, pos: Any, n_heads: int, *, out: Any = None,
         device: Device | None = None) -> Tensor:
    """Rotary position embedding, transformers' convention (`rotate_half`): per head of
    d = table.head_dim values, out = x * cos + cat(-x[d/2:], x[:d/2]) * sin.

    Args:
        x: float32 `[T, n_heads * head_dim]` (numpy, DeviceTensor or graph value): the
            query or key projection of T tokens at positions pos, pos+1, ..., pos+T-1.
        table: the model's vkq.RopeTable (uploaded once per device).
        pos: the first row's position: an integer, or inside a graph a `g.param(...)` that
            each replay sets (replays refuse positions whose rows pass the table).
        n_heads: heads per row.
        out: a KV cache (DeviceTensor float32 [max_seq, n_heads * head_dim]) to write the
            result into, at rows pos.. (in place: the keys' RoPE and cache write in one
            dispatch); positions must then fit the cache too.
    Returns:
        float32 like x, a new tensor (numpy for numpy x, else like x); or `out`.
    Raises:
        IndexError: positions past the table; ValueError: x's width is not n_heads * head_dim.
    """
    if not isinstance(table, RopeTable):
        raise TypeError(f"table must be a vkq.RopeTable, got {type(table).__name__}")
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise ValueError(f"n_heads must be an integer >= 1, got {n_heads!r}")
    inputs = {"x": float_tensor("x", x)}
    if out is not None:
        if isinstance(out, np.ndarray) or not hasattr(out, "spec"):
            raise TypeError("rope(out=...) updates 'cache' in place: pass a vkq.DeviceTensor "
                            "(e.g. vkq.kv_cache), not a host array")
        inputs["cache"] = out
    result = run_op("rope", inputs, {"pos": check_position(pos), "n_heads": int(n_heads)},
                    weight=table, device=device)
    return out if out is not None else result["y"]


def argmax(x: Tensor, *, device: Device | None = None) -> Tensor:
    """Index of the first maximum of each row of x float32 `[M, N]` (N >= 1), as numpy.argmax
    (a NaN counts as the maximum: the first NaN wins); int32 `[M]` (numpy for numpy x, else
    like x). Float64/16 host arrays are converted to float32 first."""
    return run_op("argmax", {"x": float_tensor("x", x)}, device=device)["y"]
