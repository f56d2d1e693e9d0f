"""Group-wise int4 quantization parameters: scales and optional float zeros.

Formats (both version 1; logical ``shape`` is the weight's ``(N, K)``):

``"group_params_ng"`` -- the layout vkq kernels consume
    ``scales`` float32 ``(N, n_groups)`` and, for asymmetric weights, ``zeros``
    float32 ``(N, n_groups)``, row-major by channel: ``scales[n, g]`` is the
    scale of ``k = g*gs .. (g+1)*gs - 1`` of channel ``n``. A GEMV lane walking K
    of one channel therefore reads consecutive groups.

``"group_params_gn"`` -- the transposed layout some other backends produce
    Same arrays with shape ``(n_groups, N)``. Kernels refuse it by name (shapes
    alone cannot tell the two apart when ``N == n_groups``); convert it with
    :func:`repack_group_params_ng`.

``params`` = ``{"group_size": gs, "n_groups": K // gs, "has_zeros": 0 or 1}``.

Rules: ``gs`` is a positive multiple of 8 dividing K (a group never splits a
32-bit word of 8 nibbles); scales and zeros are finite after the cast to float32
(any sign: all-zero groups have scale 0 in many checkpoints, and ggml's Q4_0 blocks
often carry a negative one). Dequantization (docs/design.md §2): ``w = (u - 8) * scale + zero``.
There is no padding: ``n_groups * gs == K`` exactly.

Device storage. The parameters are logically float32. Where fp16 holds every one of them
exactly (:func:`fits_half`, as it does for checkpoints that store fp16 scales, and for
``vkq.quantize_weight``'s default), a kernel may read them as fp16 from
:func:`half_words` -- the same numbers in half the bytes.
"""

from __future__ import annotations

import numbers

import numpy as np

from .packed import LayoutError, PackedTensor, register_repack_hint

__all__ = [
    "GROUP_PARAMS_NG",
    "GROUP_PARAMS_GN",
    "pack_group_params",
    "pack_group_params_gn",
    "unpack_group_params",
    "repack_group_params_ng",
    "fits_half",
    "half_words",
    "group_params_nbytes",
]

GROUP_PARAMS_NG = "group_params_ng"
GROUP_PARAMS_GN = "group_params_gn"
VERSION = 1

register_repack_hint(
    GROUP_PARAMS_NG,
    "convert [n_groups, N] parameters with vkq.layouts.repack_group_params_ng(p), "
    "or pack [N, n_groups] arrays with vkq.layouts.pack_group_params(scales, zeros, group_size, k)",
)
register_repack_hint(
    GROUP_PARAMS_GN,
    "pack [n_groups, N] arrays with vkq.layouts.pack_group_params_gn(scales, zeros, group_size, k)",
)


def check_group_size(group_size: object, k: object) -> int:
    """Validate ``group_size`` against ``k`` (docs/design.md §2) and return ``n_groups = k // group_size``."""
    for name, v in (("group_size", group_size), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    gs, k = int(group_size), int(k)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if gs <= 0 or gs % 8 != 0:
        raise ValueError(f"group_size must be a positive multiple of 8, got {gs}")
    if k % gs != 0:
        raise ValueError(f"group_size {gs} must divide K = {k} (K % group_size = {k % gs})")
    return k // gs


def _float32_params(a: object, name: str, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    # Checked after the cast: a float64 value can be finite yet overflow (inf) or
    # underflow (0) in float32, which is what the kernel will see.
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(a, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite in float32; {name}{list(idx)} = {float(a[idx])}")
    return out


def _pack(
    fmt: str,
    scales: object,
    zeros: object | None,
    group_size: int,
    k: int,
    transposed: bool,
) -> PackedTensor:
    n_groups = check_group_size(group_size, k)
    if not isinstance(scales, np.ndarray):
        raise TypeError(f"scales must be a numpy.ndarray, got {type(scales).__name__}")
    if scales.ndim != 2:
        raise ValueError(f"scales must be 2-D, got shape {scales.shape}")
    n = scales.shape[1] if transposed else scales.shape[0]
    shape = (n_groups, n) if transposed else (n, n_groups)
    arrays = {"scales": _float32_params(scales, "scales", shape)}
    if zeros is not None:
        arrays["zeros"] = _float32_params(zeros, "zeros", shape)
    params = {"group_size": int(group_size), "n_groups": n_groups, "has_zeros": int(zeros is not None)}
    return PackedTensor(fmt, VERSION, (n, int(k)), arrays, params)


def group_params_nbytes(shape: tuple[int, int], group_size: int, has_zeros: bool) -> dict[str, int]:
    """Bytes of each float32 array :func:`pack_group_params` makes for a weight of ``shape``
    ``(N, K)`` (fp16 storage, :func:`half_words`, needs about half)."""
    n, k = shape
    per_array = 4 * n * check_group_size(group_size, k)
    return {"scales": per_array, **({"zeros": per_array} if has_zeros else {})}


def pack_group_params(
    scales: np.ndarray, zeros: np.ndarray | None, group_size: int, k: int
) -> PackedTensor:
    """Pack ``scales[N, n_groups]`` (and optional ``zeros[N, n_groups]``) as ``"group_params_ng"``."""
    return _pack(GROUP_PARAMS_NG, scales, zeros, group_size, k, transposed=False)


def pack_group_params_gn(
    scales: np.ndarray, zeros: np.ndarray | None, group_size: int, k: int
) -> PackedTensor:
    """Pack transposed ``scales[n_groups, N]`` (and optional zeros) as ``"group_params_gn"``."""
    return _pack(GROUP_PARAMS_GN, scales, zeros, group_size, k, transposed=True)


def _checked_arrays(p: PackedTensor, transposed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    n, k = p.shape
    gs, n_groups, has_zeros = p.param("group_size"), p.param("n_groups"), p.param("has_zeros")
    if gs * n_groups != k:
        raise LayoutError(f"'{p.format}' params group_size={gs} x n_groups={n_groups} != K={k}")
    shape = (n_groups, n) if transposed else (n, n_groups)
    scales = p.array("scales", shape, np.float32)
    zeros = p.array("zeros", shape, np.float32) if has_zeros else None
    return scales, zeros


def unpack_group_params(p: PackedTensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(scales[N, n_groups], zeros[N, n_groups] or None)`` from a ``"group_params_ng"`` tensor.

    Data of any other format (including the transposed ``"group_params_gn"``)
    raises LayoutError.
    """
    p.expect(GROUP_PARAMS_NG, VERSION)
    scales, zeros = _checked_arrays(p, transposed=False)
    return scales.copy(), None if zeros is None else zeros.copy()


def repack_group_params_ng(p: PackedTensor) -> PackedTensor:
    """Convert a ``"group_params_gn"`` tensor (``[n_groups, N]``) to ``"group_params_ng"``."""
    p.expect(GROUP_PARAMS_GN, VERSION)
    scales, zeros = _checked_arrays(p, transposed=True)
    arrays = {"scales": np.ascontiguousarray(scales.T)}
    if zeros is not None:
        arrays["zeros"] = np.ascontiguousarray(zeros.T)
    return PackedTensor(GROUP_PARAMS_NG, VERSION, p.shape, arrays, dict(p.params))


#: Smallest normal fp16 number. Stored halves are kept normal: GPUs may flush fp16 subnormals.
HALF_MIN_NORMAL = 2.0 ** -14


def fits_half(a: np.ndarray) -> bool:
    """Whether fp16 holds every value of ``a`` exactly, each as a normal number or zero."""
    a32 = np.asarray(a, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = a32.astype(np.float16)
    mag = np.abs(a32)
    return bool(np.all(np.isfinite(h)) and np.array_equal(h.astype(np.float32), a32)
                and np.all((mag == 0) | (mag >= HALF_MIN_NORMAL)))


def half_words(a: np.ndarray) -> np.ndarray:
    """fp16 copies of a parameter array (row-major), two per uint32 word: element i in bits
    16 * (i % 2) .. 16 * (i % 2) + 15 of word i // 2, an odd count padded with a zero half.
    Only for arrays that :func:`fits_half`."""
    if not fits_half(a):
        raise ValueError("these group parameters are not all exact fp16 normals; keep them float32")
    h = np.ascontiguousarray(a, dtype=np.float32).astype(np.float16).reshape(-1)
    if h.size % 2:
        h = np.concatenate([h, np.zeros(1, np.float16)])
    return h.view("<u4").copy()
