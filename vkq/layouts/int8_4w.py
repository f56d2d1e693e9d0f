"""4W int8 layout (format ``"int8_4w"``, version 1): 4 consecutive k per int32 word.

For GEMV (M == 1) inputs and outputs, where a 4H4W block would carry 3 padding
rows out of 4. Works for any M (each row packed independently).

Element order
    ``data`` is int32 of shape ``(M, K4)`` with ``K4 = ceil(K / 4)``, row-major;
    word ``data[m, k4]`` holds ``x[m, 4*k4 .. 4*k4 + 3]``.

Bit order
    Little endian: ``x[m, 4*k4 + j]`` (two's complement) is in bits ``8j .. 8j+7``.

Padding
    Columns ``K .. 4*K4 - 1`` are 0.
"""

from __future__ import annotations

import numpy as np

from .packed import (
    PackedTensor,
    ceil_div,
    int32_words,
    register_repack_hint,
    require_matrix,
    word_bytes,
)

__all__ = ["INT8_4W", "pack_int8_4w", "unpack_int8_4w", "int8_4w_nbytes"]

INT8_4W = "int8_4w"
VERSION = 1

register_repack_hint(INT8_4W, "pack it with vkq.layouts.pack_int8_4w(x) from int8 [M, K]")


def int8_4w_nbytes(shape: tuple[int, int]) -> dict[str, int]:
    """Bytes of each array :func:`pack_int8_4w` makes for ``x`` of ``shape`` ``(M, K)``."""
    m, k = shape
    return {"data": m * ceil_div(k, 4) * 4}


def pack_int8_4w(x: np.ndarray) -> PackedTensor:
    """Pack int8 ``x[M, K]`` into the 4W layout described in this module's docstring."""
    require_matrix(x, np.int8, "x")
    m, k = x.shape
    k4 = ceil_div(k, 4)
    padded = np.zeros((m, 4 * k4), dtype=np.int8)
    padded[:, :k] = x
    data = int32_words(padded.reshape(m, k4, 4))
    return PackedTensor(INT8_4W, VERSION, x.shape, {"data": data}, {})


def unpack_int8_4w(p: PackedTensor) -> np.ndarray:
    """Recover int8 ``x[M, K]`` from a ``"int8_4w"`` tensor (LayoutError for other formats)."""
    p.expect(INT8_4W, VERSION)
    m, k = p.shape
    data = p.array("data", (m, ceil_div(k, 4)), np.int32)
    return np.ascontiguousarray(word_bytes(data, np.int8).reshape(m, -1)[:, :k])
