"""rope (rope.comp.j2): rotary position embedding of x [T, n_heads * head_dim] whose rows are
positions pos..pos+T-1, from a RopeTable's cos/sin tables (the op's weight, uploaded once per
device).

The position is an attribute: an int, or a graph parameter (anything with a `slot`: the
graph's `g.param(...)`), whose value each replay writes into the graph's parameter buffer
(role "params"), so a decode loop replays the same commands at every position.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq.ops.common import ceil_div, grid_2d, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.ops.positions import position_args
from vkq.reference.rope import rope_reference
from vkq.rope_table import DeviceRopeTable, RopeTable
from vkq.shaderlib import variant_name

WORKGROUP = 256  # rope.comp.j2's local size


@register
class Rope(Op):
    """Input "x" dense float32 [T, n_heads * head_dim]; weight a RopeTable; attributes "pos"
    (int or graph parameter) and "n_heads"; output "y" like x."""

    name = "rope"
    reference = staticmethod(rope_reference)

    def prepack(self, weight: Any, device: Any) -> DeviceRopeTable:
        if not isinstance(weight, RopeTable):
            raise TypeError(f"rope: the table must be a vkq.RopeTable, got {type(weight).__name__}")
        return weight.prepacked(device)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        require_dense_f32(self.name, "x", x, "[T, n_heads * head_dim]")
        rows, width = x.shape
        n_heads, head_dim, table_rows = int(attrs["n_heads"]), weight.head_dim, weight.max_positions
        if width != n_heads * head_dim:
            raise ValueError(f"rope: x has {width} columns, not n_heads * head_dim = {n_heads} * "
                             f"{head_dim} = {n_heads * head_dim}")
        cache = inputs.get("cache")
        capacity, what = table_rows, "table"
        if cache is not None:  # the output goes to rows pos.. of a KV cache, in place
            if cache.layout != "dense" or cache.dtype != np.float32 or len(cache.shape) != 2 \
                    or cache.shape[1] != width:
                raise ValueError(f"rope: the cache must be a dense float32 [max_seq, {width}] "
                                 f"tensor, got {cache.describe()}")
            if cache.shape[0] < table_rows:
                capacity, what = cache.shape[0], "cache"
        if rows > capacity:
            raise IndexError(f"rope: {rows} rows need positions past the {what}'s {capacity}")
        pos, params = position_args(self.name, attrs["pos"], rows, capacity, what)
        if rows * width >= 1 << 32:
            raise ValueError(f"rope: {rows} x {width} floats exceed the kernel's 32-bit index")
        pairs = rows * width // 2
        d = PlannedDispatch(variant_name("rope"),
                            grid_2d(ceil_div(pairs, WORKGROUP), device.caps.max_workgroup_count[0]),
                            {"t_out": "cache" if cache is not None else "y", "t_in": "x",
                             "t_cos": "weight.cos", "t_sin": "weight.sin", "t_params": params},
                            {"rows": rows, "n_heads": n_heads, "half_dim": head_dim // 2,
                             "table_rows": table_rows, **pos, "to_cache": int(cache is not None)})
        if cache is not None:
            return Plan([d] if pairs else [], {}, writes=frozenset({"cache"}))
        return Plan([d] if pairs else [], {"y": TensorSpec.dense(x.shape)})


def describe_variants(caps: object) -> dict[str, str]:
    return {"rope": variant_name("rope")}
