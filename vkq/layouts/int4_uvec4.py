"""int4 weight layout (format ``"int4_uvec4"``, version 1): 32 nibbles per uvec4.

For group-wise int4 weights ``q[N, K]`` with ``q`` in [-8, 7] (docs/design.md §2). Each
nibble stores ``u = q + 8`` (0..15).

Element order
    ``data`` is uint32 of shape ``(N, KB, 4)`` with ``KB = ceil(K / 32)``,
    row-major: one ``(n, b)`` entry is a uvec4 covering ``k = 32*b .. 32*b + 31``
    of channel ``n``. The words of one channel are contiguous, so GEMV lanes that
    split K read consecutive 16-byte words (coalesced).

Bit order
    Component ``c`` of the uvec4 covers ``k0 = 32*b + 8*c .. k0 + 7``. In that
    uint32, byte ``j`` (bits ``8j .. 8j+7``, little endian) holds
    ``u[n, k0 + j]`` in its low nibble and ``u[n, k0 + 4 + j]`` in its high nibble.
    Hence ``word & 0x0F0F0F0F`` is the packed 4x8 operand for ``k0 .. k0+3`` and
    ``(word >> 4) & 0x0F0F0F0F`` the one for ``k0+4 .. k0+7``, each ready for
    ``dotPacked4x8``.

Padding
    ``k = K .. 32*KB - 1`` store ``u = 8``, which decodes to ``q = 0`` and so adds
    nothing to ``sum (u - 8) * x``.
"""

from __future__ import annotations

import numpy as np

from .packed import (
    PackedTensor,
    ceil_div,
    int32_words,
    register_repack_hint,
    require_matrix,
    require_range,
    row_chunks,
    word_bytes,
)

__all__ = ["INT4_UVEC4", "pack_int4_weight", "unpack_int4_weight", "int4_weight_nbytes"]

INT4_UVEC4 = "int4_uvec4"
VERSION = 1

#: Nibbles per uvec4 (4 words x 8 nibbles).
K_BLOCK = 32
#: Stored value of q = 0 (the offset of the unsigned encoding).
OFFSET = 8

register_repack_hint(
    INT4_UVEC4, "pack it with vkq.layouts.pack_int4_weight(q) from int8 [N, K] in [-8, 7]"
)


def int4_weight_nbytes(shape: tuple[int, int]) -> dict[str, int]:
    """Bytes of each array :func:`pack_int4_weight` makes for ``q`` of ``shape`` ``(N, K)``."""
    n, k = shape
    return {"data": n * ceil_div(k, K_BLOCK) * 16}


def pack_int4_weight(q: np.ndarray) -> PackedTensor:
    """Pack int4 weights ``q[N, K]`` (int8 dtype, values in [-8, 7]) into uvec4 words."""
    require_matrix(q, np.int8, "q")
    require_range(q, -8, 7, "q", "int4 weights, stored as q + 8")
    n, k = q.shape
    kb = ceil_div(k, K_BLOCK)
    data = np.empty((n, kb, 4), np.uint32)
    for rows in row_chunks(n, 2 * kb * K_BLOCK):  # temporaries: ~2 bytes per nibble of a block
        data[rows] = _pack_rows(q[rows], kb)
    return PackedTensor(INT4_UVEC4, VERSION, q.shape, {"data": data}, {})


def _pack_rows(q: np.ndarray, kb: int) -> np.ndarray:
    """uint32 ``(rows, kb, 4)`` words of int4 rows ``q``."""
    n, k = q.shape
    u = np.full((n, kb * K_BLOCK), OFFSET, dtype=np.uint8)
    u[:, :k] = q + OFFSET  # no overflow: q + 8 is in [0, 15]
    # k = 32b + 8c + 4h + j  ->  axes (n, b, c, h, j); h selects the nibble half.
    u = u.reshape(n, kb, 4, 2, 4)
    packed_bytes = u[:, :, :, 0, :] | (u[:, :, :, 1, :] << 4)  # (n, b, c, j)
    return int32_words(packed_bytes)


def unpack_int4_weight(p: PackedTensor) -> np.ndarray:
    """Recover int8 ``q[N, K]`` in [-8, 7] from a ``"int4_uvec4"`` tensor (LayoutError otherwise)."""
    p.expect(INT4_UVEC4, VERSION)
    n, k = p.shape
    kb = ceil_div(k, K_BLOCK)
    data = p.array("data", (n, kb, 4), np.uint32)
    b = word_bytes(data, np.uint8)  # (n, b, c, j)
    u = np.stack((b & 0x0F, b >> 4), axis=3)  # (n, b, c, h, j)
    q = u.reshape(n, kb * K_BLOCK)[:, :k].astype(np.int8) - np.int8(OFFSET)
    return np.ascontiguousarray(q)
