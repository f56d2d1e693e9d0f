"""4H4W int8 layout (format ``"int8_4h4w"``, version 1): 4(row) x 4(k) tiles as ivec4.

For the tiled GEMM's int8 activations and outputs ``x[M, K]``.

Element order
    ``data`` is int32 of shape ``(M4, K4, 4)`` with ``M4 = ceil(M / 4)`` and
    ``K4 = ceil(K / 4)``; one ``(m4, k4)`` block is one ivec4 (16 bytes), blocks
    row-major by ``(m4, k4)``. Component ``i`` of block ``(m4, k4)`` is the word
    ``data[m4, k4, i]`` and holds row ``4*m4 + i``, columns ``4*k4 .. 4*k4 + 3``.

Bit order
    Little endian: ``x[4*m4 + i, 4*k4 + j]`` (two's complement) is in bits
    ``8j .. 8j+7`` of that word, ready for ``dotPacked4x8``.

Padding
    Rows ``M .. 4*M4 - 1`` and columns ``K .. 4*K4 - 1`` are 0, so they add
    nothing to an integer dot product.
"""

from __future__ import annotations

import numpy as np

from .packed import (
    PackedTensor,
    ceil_div,
    int32_words,
    register_repack_hint,
    require_matrix,
    row_chunks,
    word_bytes,
)

__all__ = ["INT8_4H4W", "pack_int8_4h4w", "unpack_int8_4h4w", "int8_4h4w_nbytes"]

INT8_4H4W = "int8_4h4w"
VERSION = 1

register_repack_hint(INT8_4H4W, "pack it with vkq.layouts.pack_int8_4h4w(x) from int8 [M, K]")


def tile_4x4(x: np.ndarray) -> np.ndarray:
    """Zero-pad int8 ``[R, C]`` to multiples of 4 and pack into int32 ``(R4, C4, 4)`` tiles.

    Shared with the int8 weight layout, which uses the same tile with channels as rows.
    """
    r, c = x.shape
    r4, c4 = ceil_div(r, 4), ceil_div(c, 4)
    data = np.empty((r4, c4, 4), np.int32)
    for rows in row_chunks(r, 2 * 4 * c4, multiple=4):  # blocks of whole 4-row tiles
        data[rows.start // 4: ceil_div(rows.stop, 4)] = _tile_rows(x[rows], c4)
    return data


def _tile_rows(x: np.ndarray, c4: int) -> np.ndarray:
    """int32 ``(ceil(rows / 4), c4, 4)`` tiles of int8 rows ``x``."""
    r, c = x.shape
    r4 = ceil_div(r, 4)
    padded = np.zeros((4 * r4, 4 * c4), dtype=np.int8)
    padded[:r, :c] = x
    # (r4, i, c4, j) -> (r4, c4, i, j): the 4 bytes j of row i become one word.
    tiles = padded.reshape(r4, 4, c4, 4).transpose(0, 2, 1, 3)
    return int32_words(tiles)


def untile_4x4(data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of :func:`tile_4x4`: int32 ``(R4, C4, 4)`` -> int8 ``[rows, cols]``."""
    r4, c4, _ = data.shape
    b = word_bytes(data, np.int8)  # (r4, c4, i, j)
    full = b.transpose(0, 2, 1, 3).reshape(4 * r4, 4 * c4)
    return np.ascontiguousarray(full[:rows, :cols])


def tile_4x4_nbytes(rows: int, cols: int) -> int:
    """Bytes of :func:`tile_4x4`'s result for ``[rows, cols]``."""
    return ceil_div(rows, 4) * ceil_div(cols, 4) * 16


def int8_4h4w_nbytes(shape: tuple[int, int]) -> dict[str, int]:
    """Bytes of each array :func:`pack_int8_4h4w` makes for ``x`` of ``shape`` ``(M, K)``."""
    return {"data": tile_4x4_nbytes(*shape)}


def pack_int8_4h4w(x: np.ndarray) -> PackedTensor:
    """Pack int8 ``x[M, K]`` into the 4H4W layout described in this module's docstring."""
    require_matrix(x, np.int8, "x")
    return PackedTensor(INT8_4H4W, VERSION, x.shape, {"data": tile_4x4(x)}, {})


def unpack_int8_4h4w(p: PackedTensor) -> np.ndarray:
    """Recover int8 ``x[M, K]`` from a ``"int8_4h4w"`` tensor (LayoutError for other formats)."""
    p.expect(INT8_4H4W, VERSION)
    m, k = p.shape
    data = p.array("data", (ceil_div(m, 4), ceil_div(k, 4), 4), np.int32)
    return untile_4x4(data, m, k)
