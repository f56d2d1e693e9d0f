"""Packed GPU layouts for vkq (pure numpy; no Vulkan needed).

Each packer validates its input and returns a self-describing
:class:`PackedTensor`; each unpacker (and each kernel) first calls
:meth:`PackedTensor.expect` so data packed for another layout is refused with a
:class:`LayoutError` that names the function producing the right one.
:func:`packed_nbytes` tells from a shape alone how large each packed array will be, so
callers can check a device's buffer limits before any packing.
"""

from .group_params import (
    GROUP_PARAMS_GN,
    GROUP_PARAMS_NG,
    HALF_MIN_NORMAL,
    check_group_size,
    fits_half,
    group_params_nbytes,
    half_words,
    pack_group_params,
    pack_group_params_gn,
    repack_group_params_ng,
    unpack_group_params,
)
from .int4_uvec4 import INT4_UVEC4, int4_weight_nbytes, pack_int4_weight, unpack_int4_weight
from .int8_4h4w import INT8_4H4W, int8_4h4w_nbytes, pack_int8_4h4w, unpack_int8_4h4w
from .int8_4w import INT8_4W, int8_4w_nbytes, pack_int8_4w, unpack_int8_4w
from .int8_token_octets import (INT8_TOKEN_OCTETS, int8_token_octets_nbytes, pack_int8_token_octets,
                                unpack_int8_token_octets)
from .int8_weight import INT8_WEIGHT, int8_weight_nbytes, pack_int8_weight, unpack_int8_weight
from .packed import REPACK_HINTS, LayoutError, PackedTensor

__all__ = [
    "LayoutError",
    "PackedTensor",
    "REPACK_HINTS",
    "INT8_4H4W",
    "INT8_4W",
    "INT8_TOKEN_OCTETS",
    "INT8_WEIGHT",
    "INT4_UVEC4",
    "GROUP_PARAMS_NG",
    "GROUP_PARAMS_GN",
    "pack_int8_4h4w",
    "unpack_int8_4h4w",
    "pack_int8_4w",
    "unpack_int8_4w",
    "pack_int8_token_octets",
    "unpack_int8_token_octets",
    "pack_int8_weight",
    "unpack_int8_weight",
    "pack_int4_weight",
    "unpack_int4_weight",
    "pack_group_params",
    "pack_group_params_gn",
    "unpack_group_params",
    "repack_group_params_ng",
    "check_group_size",
    "fits_half",
    "half_words",
    "HALF_MIN_NORMAL",
    "packed_nbytes",
]

#: format name -> unpacker, for code that holds packed data of any format (vkq.DeviceTensor).
UNPACKERS = {
    INT8_4H4W: unpack_int8_4h4w,
    INT8_4W: unpack_int8_4w,
    INT8_WEIGHT: unpack_int8_weight,
    INT4_UVEC4: unpack_int4_weight,
    GROUP_PARAMS_NG: unpack_group_params,
}

_NBYTES = {
    INT8_4H4W: int8_4h4w_nbytes,
    INT8_4W: int8_4w_nbytes,
    INT8_TOKEN_OCTETS: int8_token_octets_nbytes,
    INT8_WEIGHT: int8_weight_nbytes,
    INT4_UVEC4: int4_weight_nbytes,
    GROUP_PARAMS_NG: group_params_nbytes,
}


def packed_nbytes(format: str, shape: tuple[int, int], **params: int) -> dict[str, int]:
    """Bytes of each array the packer of ``format`` makes for a logical ``shape`` (``params``:
    the layout's own, e.g. ``group_size`` and ``has_zeros`` for "group_params_ng"), computed
    from the shape alone: nothing is allocated."""
    if format not in _NBYTES:
        raise ValueError(f"unknown packed format {format!r}; known: {sorted(_NBYTES)}")
    return _NBYTES[format](tuple(int(d) for d in shape), **params)
