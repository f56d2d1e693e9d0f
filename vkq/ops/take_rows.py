"""take_rows (take_rows.comp.j2): rows [index, index + rows) of a float32 table [T, W].

The index is an attribute: an int, or a graph parameter (anything with a `slot`: the
graph's `g.param(...)`), whose value each replay writes into the graph's parameter buffer
(role "params"), so the recorded commands never change.
"""
from __future__ import annotations

from typing import Any, Mapping

from vkq.ops.common import ceil_div, grid_2d, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.ops.positions import position_args
from vkq.reference.take_rows import take_rows_reference
from vkq.shaderlib import variant_name

@register
class TakeRows(Op):
    """Input "table" dense float32 [T, W]; attributes "index" (int or graph parameter) and
    "rows"; output "y" [rows, W]."""

    name = "take_rows"
    reference = staticmethod(take_rows_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        table = inputs["table"]
        require_dense_f32(self.name, "the table", table, "[T, W]")
        t, w = table.shape
        rows = int(attrs["rows"])
        if rows > t:
            raise IndexError(f"take_rows: {rows} rows of a table of {t} rows")
        pos, params = position_args(self.name, attrs["index"], rows, t, "table")
        if t * w >= 1 << 32:
            raise ValueError(f"take_rows: a table of {t} x {w} floats exceeds the 32-bit index")
        total = rows * w
        d = PlannedDispatch(variant_name("take_rows"),
                            grid_2d(ceil_div(total, 256), device.caps.max_workgroup_count[0]),
                            {"t_out": "y", "t_table": "table", "t_params": params},
                            {"rows": rows, "width": w, "table_rows": t, **pos})
        return Plan([d] if total else [], {"y": TensorSpec.dense((rows, w))})
