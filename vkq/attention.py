"""Public attention ops for a decoder: `vkq.kv_cache`, `vkq.kv_write`, `vkq.attention`.

    k_cache = vkq.kv_cache(max_seq, n_kv_heads * head_dim)      # zeros on the device
    vkq.kv_write(k_cache, k, pos)                               # rows pos .. pos + T - 1
    vkq.kv_write(v_cache, v, pos)
    y = vkq.attention(q, k_cache, v_cache, pos, n_heads, n_kv_heads)
    # or, a decoder step in one call (one dispatch for T = 1): RoPE of q and k, the write
    y = vkq.attention(q, k_cache, v_cache, pos, n_heads, n_kv_heads, rope=table, new_kv=(k, v))

The caches are DeviceTensors updated in place; inside `with vkq.graph() as g:` they are
captured by reference (their rows persist from one replay to the next) and `pos` can be a
`g.param(...)` that each replay sets, so one graph serves every decode step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vkq.execute import run_op
from vkq.ops.common import check_fits, dense_need, float_tensor
from vkq.ops.attention import KERNELS
from vkq.ops.contract import DENSE
from vkq.ops.kv_write import CACHE_KINDS
from vkq.ops.positions import check_position
from vkq.rope_table import RopeTable
from vkq.runtime import Device, default_device
from vkq.tensor import DeviceTensor

Tensor = Any  # numpy array | vkq.DeviceTensor | vkq.graph.Value


def kv_cache(max_seq: int, width: int, dtype: Any = np.float32, *,
             device: Device | None = None) -> DeviceTensor:
    """A zeroed KV cache `[max_seq, width]` on the device (width = n_kv_heads * head_dim).

    Args:
        dtype: float32, or float16 (half the memory and the bandwidth of a decode step;
            kv_write rounds to nearest even).
    """
    shape = (_positive_int("max_seq", max_seq), _positive_int("width", width))
    dtype = np.dtype(dtype)
    if dtype not in CACHE_KINDS:
        raise TypeError(f"a KV cache is float32 or float16, got {dtype}")
    device = device or default_device()
    check_fits(device.caps, [dense_need("the KV cache", shape, dtype.itemsize)])
    data = np.zeros(shape, dtype)
    return DeviceTensor(device, DENSE, shape, dtype, {"data": device.upload(data)},
                        {"data": (shape, dtype)})


def kv_write(cache: DeviceTensor, x: Tensor, pos: Any, *, device: Device | None = None) -> DeviceTensor:
    """Write the rows of `x` into `cache` at rows `pos .. pos + T - 1`, in place.

    Args:
        cache: a DeviceTensor `[max_seq, W]`, float32 or float16 (`vkq.kv_cache`).
        x: float `[T, W]` (numpy, float32 DeviceTensor, or graph value).
        pos: int, or inside a graph a `g.param(...)`; the rows must lie in the cache.
    Returns:
        `cache` (after the write is submitted; eager calls do not wait).
    """
    run_op("kv_write", {"cache": float_tensor("cache", cache), "x": float_tensor("x", x)},
           {"pos": check_position(pos)}, device=device)
    return cache


def attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Any, n_heads: int,
              n_kv_heads: int, *, rope: RopeTable | None = None, new_kv: tuple[Tensor, Tensor] | None = None,
              kernel: str = "auto", device: Device | None = None) -> Tensor:
    """Causal grouped-query attention of T query rows over a KV cache.

    Row t of `q` is position `pos + t` and attends cache rows `0 .. pos + t`; query head h
    reads kv head `h // (n_heads // n_kv_heads)`; scores are `q . k / sqrt(head_dim)`, the
    softmax in fp32. T = 1 is a decode step; T > 1 a prefill.

    A decoder step passes `rope` and `new_kv` (the same results as `vkq.rope` of q and k,
    `vkq.kv_write` of k and v, then this call without them): for T = 1 that is one dispatch,
    which ropes q and k itself and writes k and v into the caches (no dispatches of their
    own, so no barrier between them and the attention); for T > 1 the rope and kv_write
    dispatches run first, inside this call.

    Args:
        q: float `[T, n_heads * head_dim]` (numpy, float32 DeviceTensor, or graph value);
            pre-RoPE when `rope` is given.
        k_cache, v_cache: `[max_seq, n_kv_heads * head_dim]`, float32 or float16
            DeviceTensors (a host array is uploaded per eager call, as float32; with
            `new_kv` they must be DeviceTensors: they are updated in place).
        pos: int, or inside a graph a `g.param(...)`; `pos + T <= max_seq` (and the rope
            table's max_positions).
        rope: the model's vkq.RopeTable (head_dim as q's heads): q, and the keys of
            `new_kv`, are rotated to their positions first (transformers' rotate_half).
        new_kv: `(k, v)`, float `[T, n_kv_heads * head_dim]` each: the keys (pre-RoPE when
            `rope` is given) and values of the T tokens, written into the caches at rows
            `pos .. pos + T - 1` (float16 caches: rounded to nearest even) and attended.
        kernel: "auto" (the context cut into as many chunks as fill the device, merged by
            the chunk that finishes last); "single" (one chunk covers the context) or "split"
            (chunks of 8 rows) force a path (tests use them).
    Returns:
        float32 `[T, n_heads * head_dim]`: numpy when every input is a host array, else a
        DeviceTensor (returned without waiting), or a graph value inside a capture.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if rope is not None and not isinstance(rope, RopeTable):
        raise TypeError(f"rope must be a vkq.RopeTable or None, got {type(rope).__name__}")
    inputs = {"q": float_tensor("q", q), "k_cache": float_tensor("k_cache", k_cache),
              "v_cache": float_tensor("v_cache", v_cache)}
    if new_kv is not None:
        inputs.update(_new_rows(new_kv, k_cache, v_cache))
    attrs = {"pos": check_position(pos), "n_heads": _positive_int("n_heads", n_heads),
             "n_kv_heads": _positive_int("n_kv_heads", n_kv_heads), "kernel": kernel}
    return run_op("attention", inputs, attrs, weight=rope, device=device)["y"]


def _new_rows(new_kv: Any, k_cache: Any, v_cache: Any) -> dict[str, Any]:
    """The op's "k_new" / "v_new" inputs from `new_kv`, after checking that it is a pair and
    that the caches it goes into are two tensors."""
    if not isinstance(new_kv, (tuple, list)) or len(new_kv) != 2:
        raise TypeError(f"new_kv must be a pair (k, v) of [T, n_kv_heads * head_dim] tensors, "
                        f"got {type(new_kv).__name__}")
    if k_cache is v_cache:
        raise ValueError("new_kv writes k_cache and v_cache: they must be two tensors, not one")
    return {"k_new": float_tensor("k_new", new_kv[0]), "v_new": float_tensor("v_new", new_kv[1])}


def _positive_int(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {n!r}")
    return int(n)
