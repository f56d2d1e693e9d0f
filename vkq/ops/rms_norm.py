"""rms_norm (docs/design.md §3): one workgroup per row; the vec4 variant when the width
allows it."""
from __future__ import annotations

from typing import Any, Mapping

from vkq.ops.common import check_fits, dense_need, grid_2d, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.reference.rms_norm import rms_norm_reference
from vkq.shaderlib import variant_name


def pick_variant(width: int, caps: Any) -> str:
    """The vec4 variant where the width is a multiple of 4, else the scalar one; with subgroup
    reductions where the device has subgroup arithmetic."""
    return variant_name("rms_norm", VEC4=width % 4 == 0, SUBGROUP=bool(caps.subgroup_arithmetic))


@register
class RmsNorm(Op):
    """`x * rsqrt(mean(x**2, axis=-1) + eps) * weight` over the last axis, fp32 sums.
    Inputs: "x" [..., W] float32; constant "weight" [W]; attribute "eps" (> 0)."""

    name = "rms_norm"
    reference = staticmethod(rms_norm_reference)
    constant_roles = ("weight",)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        x = inputs["x"]
        require_dense_f32(self.name, "x", x, "[..., W]")
        width = x.shape[-1]
        if width == 0:
            raise ValueError("rms_norm needs a non-empty last axis")
        rows = x.rows
        check_fits(device.caps, [dense_need("float32 rows x (and the output)", (rows, width))])
        d = norm_dispatch(device, rows, width, float(attrs["eps"]))
        return Plan([d] if rows else [], {"y": TensorSpec.dense(x.shape)})


def norm_dispatch(device: Any, rows: int, width: int, eps: float, *, out: str = "y", x: str = "x",
                  weight: str = "weight") -> PlannedDispatch:
    """The dispatch normalizing `rows` rows of `width` (buffer roles out, x and weight); also
    the prologue of a linear that takes rms_norm= where its kernel cannot fold the norm in."""
    return PlannedDispatch(pick_variant(width, device.caps), grid_2d(rows, device.caps.max_workgroup_count[0]),
                           {"t_out": out, "t_in": x, "t_weight": weight},
                           {"n_rows": rows, "width": width, "eps": eps})


#: The scratch role a linear's x is normalized into when its kernels cannot fold the norm in.
NORMED_X = "scratch.normed"


def norm_first(device: Any, m: int, k: int, eps: float, dispatches: list[PlannedDispatch],
               scratch: dict[str, int]) -> None:
    """Put the rms_norm of a linear's "x" ([m, k], weight "norm_weight") into NORMED_X before
    its `dispatches` (which read NORMED_X), and add that scratch."""
    dispatches.insert(0, norm_dispatch(device, m, k, eps, out=NORMED_X, x="x", weight="norm_weight"))
    scratch[NORMED_X] = 4 * m * k


def describe_variants(caps: object) -> dict[str, str]:
    return {"rms_norm (width % 4 == 0)": pick_variant(4, caps),
            "rms_norm (other widths)": pick_variant(3, caps)}
