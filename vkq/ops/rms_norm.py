"""rms_norm (docs/design.md §3): one workgroup per row; the vec4 variant when the width
allows it."""
from __future__ import annotations

import numpy as np

from vkq.ops.common import float_input, grid_2d, positive_finite
from vkq.runtime import Device, default_device
from vkq.shaderlib import variant_name


def pick_variant(width: int) -> str:
    """The vec4 variant where the width is a multiple of 4, else the scalar one."""
    return variant_name("rms_norm", VEC4=width % 4 == 0)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6, *,
             device: Device | None = None) -> np.ndarray:
    """`x * rsqrt(mean(x**2, axis=-1) + eps) * weight` over the last axis, fp32 sums.

    Args:
        x: float array `[..., W]` (leading dimensions are rows).
        weight: float array `[W]`.
        eps: added to the mean square, finite and > 0.
    Returns:
        float32 array shaped like x.
    """
    x = float_input("x", x)
    weight = float_input("weight", weight)
    width = x.shape[-1]
    if weight.shape != (width,):
        raise ValueError(f"weight must have shape ({width},) to match x's last axis, got {weight.shape}")
    if width == 0:
        raise ValueError("rms_norm needs a non-empty last axis")
    eps = positive_finite("eps", eps)
    device = device or default_device()
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    if rows == 0:
        return np.empty_like(x)
    kernel = device.kernel(pick_variant(width))
    with device.buffer(x.nbytes) as bx, device.buffer(x.nbytes) as by, \
            device.buffer(weight.nbytes) as bw:
        with device.batch() as b:
            b.upload(bx, x)
            b.upload(bw, weight)
            b.dispatch(kernel, grid_2d(rows, device.caps.max_workgroup_count[0]),
                       buffers={"t_out": by, "t_in": bx, "t_weight": bw},
                       push={"n_rows": rows, "width": width, "eps": eps})
            out = b.download(by)
        return out.result().view(np.float32).reshape(x.shape)


def describe_variants(caps: object) -> dict[str, str]:
    return {"rms_norm (width % 4 == 0)": pick_variant(4), "rms_norm (other widths)": pick_variant(3)}
