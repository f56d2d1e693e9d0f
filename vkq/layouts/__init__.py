"""Packed GPU layouts for vkq (pure numpy; no Vulkan needed).

Each packer validates its input and returns a self-describing
:class:`PackedTensor`; each unpacker (and each kernel) first calls
:meth:`PackedTensor.expect` so data packed for another layout is refused with a
:class:`LayoutError` that names the function producing the right one.
"""

from .group_params import (
    GROUP_PARAMS_GN,
    GROUP_PARAMS_NG,
    HALF_MIN_NORMAL,
    check_group_size,
    fits_half,
    half_words,
    pack_group_params,
    pack_group_params_gn,
    repack_group_params_ng,
    unpack_group_params,
)
from .int4_uvec4 import INT4_UVEC4, pack_int4_weight, unpack_int4_weight
from .int8_4h4w import INT8_4H4W, pack_int8_4h4w, unpack_int8_4h4w
from .int8_4w import INT8_4W, pack_int8_4w, unpack_int8_4w
from .int8_weight import INT8_WEIGHT, pack_int8_weight, unpack_int8_weight
from .packed import REPACK_HINTS, LayoutError, PackedTensor

__all__ = [
    "LayoutError",
    "PackedTensor",
    "REPACK_HINTS",
    "INT8_4H4W",
    "INT8_4W",
    "INT8_WEIGHT",
    "INT4_UVEC4",
    "GROUP_PARAMS_NG",
    "GROUP_PARAMS_GN",
    "pack_int8_4h4w",
    "unpack_int8_4h4w",
    "pack_int8_4w",
    "unpack_int8_4w",
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
]

#: format name -> unpacker, for code that holds packed data of any format (vkq.DeviceTensor).
UNPACKERS = {
    INT8_4H4W: unpack_int8_4h4w,
    INT8_4W: unpack_int8_4w,
    INT8_WEIGHT: unpack_int8_weight,
    INT4_UVEC4: unpack_int4_weight,
    GROUP_PARAMS_NG: unpack_group_params,
}
