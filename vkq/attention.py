"""Public attention ops for a decoder: `vkq.kv_cache`, `vkq.kv_write`, `vkq.attention`.

    k_cache = vkq.kv_cache(max_seq, n_kv_heads * head_dim)      # zeros on the device
    vkq.kv_write(k_cache, k, pos)                               # rows pos .. pos + T - 1
    vkq.kv_write(v_cache, v, pos)
    y = vkq.attention(q, k_cache, v_cache, pos, n_heads, n_kv_heads)

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
              n_kv_heads: int, *, kernel: str = "auto", device: Device | None = None) -> Tensor:
    """Causal grouped-query attention of T query rows over a KV cache.

    Row t of `q` is position `pos + t` and attends cache rows `0 .. pos + t`; query head h
    reads kv head `h // (n_heads // n_kv_heads)`; scores are `q . k / sqrt(head_dim)`, the
    softmax in fp32. T = 1 is a decode step; T > 1 a prefill after `kv_write` of its rows.

    Args:
        q: float `[T, n_heads * head_dim]` (numpy, float32 DeviceTensor, or graph value).
        k_cache, v_cache: `[max_seq, n_kv_heads * head_dim]`, float32 or float16
            DeviceTensors (a host array is uploaded per eager call, as float32).
        pos: int, or inside a graph a `g.param(...)`; `pos + T <= max_seq`.
        kernel: "auto"; "single" (one workgroup per head block and row covers the cache) or
            "split" (the cache in the smallest chunks, then a merging pass) force a path.
    Returns:
        float32 `[T, n_heads * head_dim]`: numpy when every input is a host array, else a
        DeviceTensor (returned without waiting), or a graph value inside a capture.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    inputs = {"q": float_tensor("q", q), "k_cache": float_tensor("k_cache", k_cache),
              "v_cache": float_tensor("v_cache", v_cache)}
    attrs = {"pos": check_position(pos), "n_heads": _positive_int("n_heads", n_heads),
             "n_kv_heads": _positive_int("n_kv_heads", n_kv_heads), "kernel": kernel}
    return run_op("attention", inputs, attrs, device=device)["y"]


def _positive_int(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {n!r}")
    return int(n)
