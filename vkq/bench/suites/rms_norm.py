"""rms_norm benchmark: one call per shape, activations read once and written once."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from vkq.bench import BenchContext, Row, register
from vkq.bench.timing import time_call
from vkq.ops.common import grid_2d
from vkq.ops.rms_norm import pick_variant
from vkq.runtime import CommandBatch


@register("rms_norm")
def bench_rms_norm(ctx: BenchContext) -> Iterator[Row]:
    dev = ctx.device
    shapes = [(1, 4096), (64, 4096)] if ctx.quick else [(1, 4096), (32, 4096), (512, 4096), (2048, 8192)]
    for rows, width in shapes:
        x = np.random.default_rng(0).standard_normal((rows, width), dtype=np.float32)
        kernel = dev.kernel(pick_variant(width, dev.caps))
        with dev.upload(x) as bx, dev.upload(x[0]) as bw, dev.buffer(x.nbytes) as by:
            def record(b: CommandBatch, i: int) -> None:
                b.dispatch(kernel, grid_2d(rows, dev.caps.max_workgroup_count[0]),
                           buffers={"t_out": by, "t_in": bx, "t_weight": bw},
                           push={"n_rows": rows, "width": width, "eps": 1e-6})
            timing = time_call(dev, record, n_copies=1, repeats=ctx.repeats)
        yield Row.timed("rms_norm", f"{rows}x{width}", kernel.name, timing,
                        bytes=2 * x.nbytes + 4 * width)
