"""rms_norm (SPEC §3): one workgroup per row; the vec4 variant when the width allows it."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.timing import time_call
from vkq.ops.common import check_fits, dense_need, float_input, grid_2d, positive_finite
from vkq.runtime import CommandBatch, Device, default_device


def pick_variant(width: int) -> str:
    return "rms_norm_vec4" if width % 4 == 0 else "rms_norm_scalar"


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
    check_fits(device.caps, [dense_need("float32 rows x (and the output)", (rows, width))])
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


@register("rms_norm")
def bench_rms_norm(ctx: BenchContext) -> Iterator[Row]:
    dev = ctx.device
    shapes = [(1, 4096), (64, 4096)] if ctx.quick else [(1, 4096), (32, 4096), (512, 4096), (2048, 8192)]
    for rows, width in shapes:
        x = np.random.default_rng(0).standard_normal((rows, width), dtype=np.float32)
        kernel = dev.kernel(pick_variant(width))
        with dev.upload(x) as bx, dev.upload(x[0]) as bw, dev.buffer(x.nbytes) as by:
            def record(b: CommandBatch, i: int) -> None:
                b.dispatch(kernel, grid_2d(rows, dev.caps.max_workgroup_count[0]),
                           buffers={"t_out": by, "t_in": bx, "t_weight": bw},
                           push={"n_rows": rows, "width": width, "eps": 1e-6})
            timing = time_call(dev, record, n_copies=1, repeats=ctx.repeats)
        yield Row.timed("rms_norm", f"{rows}x{width}", kernel.name, timing,
                        bytes=2 * x.nbytes + 4 * width)
