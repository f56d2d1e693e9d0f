"""argmax (argmax.comp.j2): int32 index of each row's first maximum, numpy's argmax (a NaN
counts as the maximum); one workgroup per row (greedy decoding over a vocabulary)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq.ops.common import check_fits, dense_need, grid_2d, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.reference.argmax import argmax_reference
from vkq.shaderlib import variant_name


def pick_variant(caps: Any) -> str:
    """Subgroup reductions where the device has subgroup arithmetic, else a shared-memory
    tree; workgroups of 1024 where the device allows them (a long row is one workgroup's)."""
    wide = getattr(caps, "max_workgroup_invocations", 0) >= 1024
    return variant_name("argmax", SUBGROUP=bool(caps.subgroup_arithmetic), WIDE=wide)


@register
class Argmax(Op):
    """Input "x" dense float32 [M, N] (N >= 1); output "y" int32 [M]."""

    name = "argmax"
    reference = staticmethod(argmax_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        require_dense_f32(self.name, "x", x, "[M, N]")
        rows, width = x.shape
        if width == 0:
            raise ValueError("argmax of an empty row: x must have N >= 1 columns")
        if rows * width >= 1 << 32:
            raise ValueError(f"argmax: {rows} x {width} floats exceed the kernel's 32-bit index")
        check_fits(device.caps, [dense_need("float32 rows x", (rows, width))])
        d = PlannedDispatch(pick_variant(device.caps), grid_2d(rows, device.caps.max_workgroup_count[0]),
                            {"t_out": "y", "t_in": "x"}, {"n_rows": rows, "width": width})
        return Plan([d] if rows else [], {"y": TensorSpec.dense((rows,), np.int32)})


def describe_variants(caps: object) -> dict[str, str]:
    return {"argmax": pick_variant(caps)}
