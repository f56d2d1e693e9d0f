"""int8 weight layout (format ``"int8_weight_4n4k"``, version 1): 4(n) x 4(k) ivec4 blocks.

For per-output-channel symmetric int8 weights ``q[N, K]`` (docs/design.md §2).

Element order
    ``data`` is int32 of shape ``(N4, K4, 4)`` with ``N4 = ceil(N / 4)``,
    ``K4 = ceil(K / 4)``; blocks row-major by ``(n4, k4)``, one block = one
    ivec4. Component ``i`` (word ``data[n4, k4, i]``) is channel ``4*n4 + i``,
    columns ``4*k4 .. 4*k4 + 3`` -- the 4H4W tile with channels as rows.

Bit order
    Little endian: ``q[4*n4 + i, 4*k4 + j]`` is in bits ``8j .. 8j+7``.

Padding
    Channels ``N .. 4*N4 - 1`` and columns ``K .. 4*K4 - 1`` are 0.

Extra array
    ``wsum`` int32 of shape ``(4*N4,)``: ``wsum[n] = sum_k q[n, k]`` (0 for padding
    channels), the zero-point correction term ``zp_x * wsum[n]`` of docs/design.md §3.

Values span the whole int8 range [-128, 127]: vkq's own quantizer produces
[-127, 127], but checkpoints from other tools (PyTorch, ExecuTorch) use -128 too, and
nothing downstream needs the symmetric range (|q_x * q_w| <= 128 * 128, docs/design.md §1).
"""

from __future__ import annotations

import numpy as np

from .int8_4h4w import tile_4x4, tile_4x4_nbytes, untile_4x4
from .packed import PackedTensor, ceil_div, register_repack_hint, require_matrix

__all__ = ["INT8_WEIGHT", "pack_int8_weight", "unpack_int8_weight", "int8_weight_nbytes"]

INT8_WEIGHT = "int8_weight_4n4k"
VERSION = 1

# Largest K for which |wsum| <= 128 * K cannot overflow int32.
_MAX_K = (2**31 - 1) // 128

register_repack_hint(
    INT8_WEIGHT, "pack it with vkq.layouts.pack_int8_weight(q) from int8 [N, K]"
)


def int8_weight_nbytes(shape: tuple[int, int]) -> dict[str, int]:
    """Bytes of each array :func:`pack_int8_weight` makes for ``q`` of ``shape`` ``(N, K)``."""
    n, k = shape
    return {"data": tile_4x4_nbytes(n, k), "wsum": 4 * 4 * ceil_div(n, 4)}


def pack_int8_weight(q: np.ndarray) -> PackedTensor:
    """Pack int8 weights ``q[N, K]`` (any K: padded with zeros to a multiple of 4) into 4n4k
    blocks plus ``wsum``."""
    require_matrix(q, np.int8, "q")
    n, k = q.shape
    if k > _MAX_K:
        raise ValueError(f"K = {k} is too large: wsum = sum_k q[n, k] must fit int32 (K <= {_MAX_K})")
    wsum = np.zeros(4 * ceil_div(n, 4), dtype=np.int32)
    wsum[:n] = q.sum(axis=1, dtype=np.int64)
    return PackedTensor(INT8_WEIGHT, VERSION, q.shape, {"data": tile_4x4(q), "wsum": wsum}, {})


def unpack_int8_weight(p: PackedTensor) -> np.ndarray:
    """Recover int8 ``q[N, K]`` from a ``"int8_weight_4n4k"`` tensor (LayoutError otherwise)."""
    p.expect(INT8_WEIGHT, VERSION)
    n, k = p.shape
    n4 = ceil_div(n, 4)
    data = p.array("data", (n4, ceil_div(k, 4), 4), np.int32)
    p.array("wsum", (4 * n4,), np.int32)
    return untile_4x4(data, n, k)
