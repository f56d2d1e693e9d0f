"""kv_write (kv_write.comp.j2): rows [pos, pos + T) of a KV cache [max_seq, W] overwritten
in place with x [T, W]: what a decoder step appends to its key and value caches.

The cache is updated in place (`Plan.writes`), so it must be a DeviceTensor; graphs capture
it by reference and the rows persist from one replay to the next. The position is an int or a
graph parameter (vkq.ops.positions). A float16 cache stores x rounded to nearest even.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq.ops.common import ceil_div, grid_2d, require_dense_f32
from vkq.ops.contract import DENSE, Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.ops.positions import position_args
from vkq.reference.kv_write import kv_write_reference
from vkq.shaderlib import variant_name

#: cache dtype -> the variant axis value
CACHE_KINDS = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}


def cache_kind(role: str, spec: TensorSpec, op: str) -> str:
    """"f32" or "f16" for a dense float32/float16 cache [max_seq, W] (TypeError otherwise)."""
    kind = CACHE_KINDS.get(spec.dtype)
    if spec.layout != DENSE or kind is None or len(spec.shape) != 2:
        raise TypeError(f"{op}: {role} must be a dense float32 or float16 [max_seq, width] "
                        f"tensor, got {spec.describe()}")
    return kind


@register
class KvWrite(Op):
    """Inputs "cache" (updated in place) and "x" dense float32 [T, W]; attribute "pos" (int
    or graph parameter). No outputs."""

    name = "kv_write"
    reference = staticmethod(kv_write_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        cache, x = inputs["cache"], inputs["x"]
        kind = cache_kind("cache", cache, self.name)
        require_dense_f32(self.name, "x", x, "[T, width]")
        max_seq, width = cache.shape
        rows = x.shape[0]
        if x.shape[1] != width:
            raise ValueError(f"kv_write: x rows have {x.shape[1]} values, the cache's {width}")
        if rows > max_seq:
            raise ValueError(f"kv_write: {rows} rows do not fit a cache of {max_seq} rows")
        if kind == "f16" and width % 2:
            raise ValueError(f"kv_write: a float16 cache needs an even width (two values per "
                             f"32-bit word), got {width}")
        if max_seq * width >= 1 << 32:
            raise ValueError(f"kv_write: a cache of {max_seq} x {width} exceeds the 32-bit index")
        push, params = position_args(self.name, attrs["pos"], rows, max_seq, "cache")
        units = width // 2 if kind == "f16" else width  # the shader's elements: halves go in pairs
        total = rows * units
        d = PlannedDispatch(variant_name("kv_write", KV=kind),
                            grid_2d(ceil_div(total, 256), device.caps.max_workgroup_count[0]),
                            {"t_cache": "cache", "t_x": "x", "t_params": params},
                            {"rows": rows, "width": units, "cache_rows": max_seq, **push})
        return Plan([d] if total else [], {}, writes=frozenset({"cache"}))
