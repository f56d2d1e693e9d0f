"""Per-token int8 activations for the int4 linear (format ``"int8_token_octets"``, version 1).

What qta8a_qga4w_linear's quantize pass writes and its kernels read: int8 values quantized
per row (docs/design.md §2), their sums per 8 consecutive k ("octets"), and each row's scale
and zero point. Octet sums serve every int4 group size (a multiple of 8): a kernel adds the
octets of a weight word or group, so one pass over x needs no group logic, and the same
quantized x could feed weights of any group size.

Element order
    ``data`` is int32 ``(M, KB, 8)`` with ``KB = ceil(K / 32)``, row-major: entry ``(m, b)``
    holds ``x[m, 32*b .. 32*b + 31]``, 4 consecutive k per word (byte j of word w is
    ``k = 32*b + 4*w + j``, little endian): the 32 k of one "int4_uvec4" weight word, in the
    order its nibbles unpack (``word & 0x0F0F0F0F`` meets word ``2c``, ``(word >> 4) &
    0x0F0F0F0F`` word ``2c + 1`` of component c).
    ``sums`` is int32 ``(M, KB, 4)``: ``sums[m, b, c] = sum of x[m, 32*b + 8*c .. + 7]``.
    ``qparams`` is uint32 ``(M, 2)``: the float32 bits of the row's scale, then its zero point
    (int32 bits).

Padding
    ``k = K .. 32*KB - 1`` hold 0 (sums 0): int4 weights pad with ``u = 8`` (q = 0), so
    padding adds nothing. K must be a multiple of 8 (every int4 weight's K is).
"""
from __future__ import annotations

import numpy as np

from .packed import PackedTensor, ceil_div, int32_words, register_repack_hint, require_matrix, word_bytes

__all__ = ["INT8_TOKEN_OCTETS", "pack_int8_token_octets", "unpack_int8_token_octets",
           "int8_token_octets_nbytes"]

INT8_TOKEN_OCTETS = "int8_token_octets"
VERSION = 1
K_BLOCK = 32

register_repack_hint(INT8_TOKEN_OCTETS, "it is made on the device by qta8a_qga4w_linear's quantize "
                                        "pass, or by vkq.layouts.pack_int8_token_octets(xq, scales, "
                                        "zero_points)")


def int8_token_octets_nbytes(shape: tuple[int, int]) -> dict[str, int]:
    """Bytes of each array for activations of ``shape`` ``(M, K)``."""
    m, k = shape
    kb = ceil_div(k, K_BLOCK)
    return {"data": 32 * m * kb, "sums": 16 * m * kb, "qparams": 8 * m}


def pack_int8_token_octets(xq: np.ndarray, scales: np.ndarray,
                           zero_points: np.ndarray) -> PackedTensor:
    """Pack int8 ``xq [M, K]`` (K % 8 == 0) with its per-row float32 ``scales`` and int32
    ``zero_points`` ``[M]``."""
    require_matrix(xq, np.int8, "xq")
    m, k = xq.shape
    if k % 8:
        raise ValueError(f"K must be a multiple of 8 (int4 weights' K is), got K = {k}")
    scales = np.asarray(scales, np.float32)
    zero_points = np.asarray(zero_points, np.int32)
    if scales.shape != (m,) or zero_points.shape != (m,):
        raise ValueError(f"scales and zero_points must have shape ({m},), got {scales.shape} "
                         f"and {zero_points.shape}")
    kb = ceil_div(k, K_BLOCK)
    padded = np.zeros((m, kb * K_BLOCK), np.int8)
    padded[:, :k] = xq
    data = int32_words(padded.reshape(m, kb, 8, 4))
    sums = padded.reshape(m, kb, 4, 8).sum(axis=3, dtype=np.int32)
    qparams = np.stack([scales.view(np.uint32), zero_points.view(np.uint32)], axis=1)
    return PackedTensor(INT8_TOKEN_OCTETS, VERSION, (m, k),
                        {"data": data, "sums": sums, "qparams": qparams})


def unpack_int8_token_octets(p: PackedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xq int8 [M, K], scales float32 [M], zero_points int32 [M])`` of a packed tensor;
    LayoutError for other formats, ValueError if the sums do not match the values."""
    p.expect(INT8_TOKEN_OCTETS, VERSION)
    m, k = p.shape
    kb = ceil_div(k, K_BLOCK)
    data = p.array("data", (m, kb, 8), np.int32)
    sums = p.array("sums", (m, kb, 4), np.int32)
    qparams = p.array("qparams", (m, 2), np.uint32)
    values = word_bytes(data, np.int8).reshape(m, kb * K_BLOCK)
    if not np.array_equal(values.reshape(m, kb, 4, 8).sum(axis=3, dtype=np.int32), sums):
        raise ValueError("int8_token_octets: the octet sums do not match the values")
    return (np.ascontiguousarray(values[:, :k]), qparams[:, 0].view(np.float32).copy(),
            qparams[:, 1].view(np.int32).copy())
