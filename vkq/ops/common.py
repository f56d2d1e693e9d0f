"""Small checks and helpers shared by op modules."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import numpy as np

from vkq import layouts
from vkq.ops.contract import HostTensor, TensorSpec
from vkq.runtime.buffer import BUFFER_ALIGN
from vkq.shaderlib import variant_info


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def float_input(name: str, x: Any, ndim_min: int = 1) -> np.ndarray:
    """A float32 C-contiguous copy/view of a float array (float16/64 accepted and converted)."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimension(s), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def positive_finite(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {v!r}") from None
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return f


def norm_option(option: Any, k: int) -> tuple[np.ndarray | None, float | None]:
    """`vkq.linear`'s rms_norm=(weight [K], eps), checked: (float32 weight, eps) or (None, None)."""
    if option is None:
        return None, None
    if not isinstance(option, (tuple, list)) or len(option) != 2:
        raise TypeError(f"rms_norm must be a (weight, eps) pair, got {type(option).__name__}")
    return rms_norm_params(option[0], option[1], k, "rms_norm ")


def rms_norm_params(weight: Any, eps: Any, width: int, prefix: str = "") -> tuple[np.ndarray, float]:
    """An rms_norm's weight (float32 [width]) and eps (finite, > 0), checked; `prefix` names
    the argument they came in ("rms_norm " for vkq.linear's rms_norm=)."""
    w = float_input(f"{prefix}weight", weight)
    if w.shape != (width,):
        raise ValueError(f"{prefix}weight must have shape ({width},) to match x's last axis, got {w.shape}")
    return w, positive_finite(f"{prefix}eps", eps)


#: max_shared arguments' default: no limit (plans made without a device, tests).
NO_SHARED_LIMIT = 1 << 62
#: A linear's GEMM on tensor cores by `kernel`, alike for every linear op: "auto" where the
#: device runs it, "gemm" never (the CUDA-core GEMM), "coopmat" always (or a ValueError).
#: Its keys are the kernel= values every linear op takes.
COOPMAT_BY_KERNEL = {"auto": None, "gemv": None, "gemm": False, "coopmat": True}


def check_linear_kernel(kernel: Any) -> str:
    """`kernel`, if it is one a linear op takes (COOPMAT_BY_KERNEL), else a ValueError."""
    if kernel not in COOPMAT_BY_KERNEL:
        raise ValueError(f"kernel must be one of {tuple(COOPMAT_BY_KERNEL)}, got {kernel!r}")
    return kernel


def fits_shared(variant: str, max_shared: int) -> bool:
    """Whether `variant`'s workgroup shared memory fits a device limit of `max_shared` bytes
    (the runtime refuses a variant that does not: route around it)."""
    return variant_info(variant).shared_bytes <= max_shared


def shared_refusal(variant: str, max_shared: int) -> str | None:
    """None if `variant` fits `max_shared` bytes of shared memory, else why a coopmat GEMM
    whose smallest tile it is cannot run."""
    if fits_shared(variant, max_shared):
        return None
    return (f"the coopmat GEMM needs {variant_info(variant).shared_bytes} bytes of shared "
            f"memory, the device has {max_shared}")


def big_tile_pays(variant: str, m: int, n: int, min_workgroups: int, max_shared: int) -> bool:
    """Whether a coopmat GEMM takes its big tile `variant` for an M x N output: its BM x BN
    tiles make at least `min_workgroups` workgroups, and it fits `max_shared` bytes."""
    p = variant_info(variant).params
    return (ceil_div(m, p["BM"]) * ceil_div(n, p["BN"]) >= min_workgroups
            and fits_shared(variant, max_shared))


def grid_2d(n_groups: int, max_x: int) -> tuple[int, int, int]:
    """Spread a 1-D workgroup count over x and y when it exceeds the device's x limit;
    shaders recover the linear id as x + y * gl_NumWorkGroups.x and skip ids past the end."""
    if n_groups <= max_x:
        return (max(n_groups, 0), 1, 1)
    return (max_x, ceil_div(n_groups, max_x), 1)


def bias_vector(bias: Any, n: int) -> np.ndarray | None:
    """None, or a float32 copy of a finite float bias of shape (n,). NaN/Inf are refused by
    every op alike: int8 outputs cannot carry them, and a float output whose every row is NaN
    is never what a bias was meant to give (NaN/Inf in float activations still propagate as
    the references say)."""
    if bias is None:
        return None
    b = np.asarray(bias)
    if b.dtype.kind != "f":
        raise TypeError(f"bias must be a float array, got dtype {b.dtype}")
    if b.shape != (n,):
        raise ValueError(f"bias must have shape ({n},) (one per output channel), got {b.shape}")
    b = np.ascontiguousarray(b, dtype=np.float32)
    if not np.all(np.isfinite(b)):
        raise ValueError("bias must be finite (found NaN or Inf after conversion to float32)")
    return b


#: vkq.linear's int8 quantization arguments (only int8 layers take them).
INT8_QPARAMS = ("input_scale", "input_zero_point", "output_scale", "output_zero_point")


def float_tensor(name: str, x: Any) -> Any:
    """An op's float input: a DeviceTensor or graph value as is (anything with a `spec`), a
    host array as a float32 HostTensor (float16/64 converted)."""
    if hasattr(x, "spec") and not isinstance(x, np.ndarray):
        return x
    arr = float_input(name, x)
    return HostTensor(TensorSpec.dense(arr.shape), arr)


def require_dense_f32(op: str, what: str, spec: TensorSpec, dims: str = "") -> None:
    """TypeError unless `spec` is a dense float32 tensor: 2-D when `dims` (its shape's
    description, e.g. "[M, N]") is given, at least 1-D with "[..., W]", any shape otherwise."""
    ndim_ok = (len(spec.shape) == 2 if dims and not dims.startswith("[...") else
               bool(spec.shape) if dims else True)
    if spec.layout != "dense" or spec.dtype != np.float32 or not ndim_ok:
        shape = f" {dims}" if dims else ""
        raise TypeError(f"{op}: {what} must be a dense float32{shape} tensor, got {spec.describe()}")


def require_float_activations(x: TensorSpec, k: int, takes: str) -> None:
    """A float linear's input: dense float32 `[..., K]` with the weight's K (`takes` says
    what the op takes, for the message when x is another kind of tensor)."""
    if x.layout != "dense" or x.dtype != np.float32:
        msg = wrong_device_input(x, takes, "vkq.to_device(x_float32)")
        raise (TypeError if x.layout == "dense" else layouts.LayoutError)(msg)
    if not x.shape or x.shape[-1] != k:
        raise ValueError(f"x must have shape [..., K] with K = {k} (the weight's), got {x.shape}")


def tensor_device(x: Any) -> Any:
    """The device of a DeviceTensor or graph value; None for host arrays (numpy 2 arrays
    have a `device` attribute of their own: "cpu")."""
    return x.device if hasattr(x, "spec") and not isinstance(x, np.ndarray) else None


def wrong_device_input(x: Any, takes: str, instead: str) -> str:
    """The message for a DeviceTensor `x` holding another kind of activations than an op
    takes: what the op takes, what x is, and what to pass instead."""
    return (f"{takes}; this DeviceTensor is {x.dtype} in layout {x.format!r}: "
            f"pass {instead} instead")


# -- buffer sizes against the device's limits ------------------------------------------------------
#: What to do about a tensor too large for one buffer.
SPLIT_LAYER = "split the layer along N (or K)"
FEWER_ROWS = "pass fewer rows (M) per call"


@dataclasses.dataclass(frozen=True)
class BufferNeed:
    """One buffer an op is about to make: what it holds (`what`, and a `shape` for messages),
    its bytes, and what the user can do when it is too large (`remedy`)."""

    what: str
    shape: tuple[int, ...]
    nbytes: int
    remedy: str = FEWER_ROWS


def check_fits(caps: Any, needs: Iterable[BufferNeed]) -> None:
    """Refuse, before any packing or upload, a buffer over the device's maxStorageBufferRange
    (lavapipe: 128 MiB; many GPUs: 4 GiB) or maxMemoryAllocationSize, naming the tensor, the
    limit and the remedy. Sizes are rounded up as vkq.runtime.Buffer rounds them."""
    limits = (("maxStorageBufferRange", caps.max_storage_buffer_range),
              ("maxMemoryAllocationSize", caps.max_memory_allocation_size))
    for need in needs:
        size = -(-need.nbytes // BUFFER_ALIGN) * BUFFER_ALIGN
        for name, limit in limits:
            if size > limit:
                dims = " x ".join(str(d) for d in need.shape)
                raise ValueError(f"{need.what} [{dims}] need {need.nbytes} bytes, over this "
                                 f"device's {name} of {limit} bytes ({caps.name}); "
                                 f"{need.remedy}, or use a device with larger limits")


def dense_need(what: str, shape: tuple[int, ...], itemsize: int = 4,
               remedy: str = FEWER_ROWS) -> BufferNeed:
    """A plain row-major array of `shape` (float32 unless `itemsize` says otherwise)."""
    return BufferNeed(what, tuple(shape), math.prod(int(d) for d in shape) * itemsize, remedy)


def packed_need(what: str, layout: str, shape: tuple[int, int],
                remedy: str = FEWER_ROWS) -> BufferNeed:
    """The "data" array of `shape` packed in `layout` (vkq.layouts.packed_nbytes)."""
    return BufferNeed(what, tuple(shape), layouts.packed_nbytes(layout, shape)["data"], remedy)


def weight_needs(bits: int, shape: tuple[int, int], group_size: int | None = None,
                 has_zeros: bool = False) -> list[BufferNeed]:
    """The device buffers of a weight `[N, K]` that could reach a limit: the int8 blocks
    (bits=8; its wsum is K times smaller), or the int4 words and float32 scales (+ zeros)
    (bits=4; fp16 storage needs half of that, the GEMM's widened copy the same)."""
    n, k = shape
    if bits == 8:
        sizes = layouts.packed_nbytes(layouts.INT8_WEIGHT, shape)
        return [BufferNeed("int8 weight blocks", (n, k), sizes["data"], SPLIT_LAYER)]
    words = layouts.packed_nbytes(layouts.INT4_UVEC4, shape)["data"]
    params = layouts.packed_nbytes(layouts.GROUP_PARAMS_NG, shape, group_size=group_size,
                                   has_zeros=has_zeros)
    n_groups = k // group_size
    return [BufferNeed("int4 weight words", (n, k), words, SPLIT_LAYER),
            *(BufferNeed(f"int4 group {name}", (n, n_groups), b, SPLIT_LAYER)
              for name, b in params.items())]
