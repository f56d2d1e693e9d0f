"""Quantized weights: the logical (unpacked) values, plus per-device packed copies made once.

`QuantizedWeight` holds what the math needs (docs/design.md §2): int8 per-channel symmetric weights, or
int4 group-wise weights (symmetric, or asymmetric with a float zero). Op modules pack and
upload it on first use and cache the result here, so repeated `vkq.linear` calls reuse it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from vkq.layouts import HALF_MIN_NORMAL, check_group_size, fits_half, packed
from vkq.ops.common import check_fits, weight_needs

#: K below which an int8 x int8 sum cannot overflow int32: 2^31 / 128^2 (docs/design.md §1).
INT8_MAX_K = 131072


def _float_array(name: str, a: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    with np.errstate(over="ignore"):  # a float64 value beyond float32 becomes inf: refused below
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found NaN or Inf after conversion to float32)")
    return arr


def _check_int8_group_size(group_size: Any, k: int) -> None:
    """int8 weights have one scale per output channel: group_size must be unset (or K)."""
    if group_size is not None and group_size != k:
        raise ValueError(f"int8 weights are per output channel (one scale per row): leave "
                         f"group_size unset, got group_size={group_size!r}")


def _read_only(a: Any) -> bool:
    """Whether no one can write `a`'s memory: `a` and every array it views are read-only, and
    the object at the bottom (if any) exposes a read-only buffer."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    if a is None:
        return True
    try:
        return memoryview(a).readonly
    except TypeError:  # an owner numpy cannot look into: assume it may write
        return False


def _copy(q: np.ndarray) -> np.ndarray:
    """A private copy of `q`, or a MemoryError that says what the copy needed and how to
    avoid it."""
    try:
        return q.copy()
    except MemoryError:
        raise MemoryError(f"QuantizedWeight copies a writeable q ({q.nbytes} bytes, "
                          f"[{q.shape[0]} x {q.shape[1]}] int8) and this host could not "
                          f"allocate that; hand q over instead (q.setflags(write=False) or "
                          f"np.load(..., mmap_mode='r')) and it is kept without a copy") from None


class QuantizedWeight:
    """Weights `[N, K]` quantized to int8 (per channel) or int4 (group-wise along K).

    Args:
        q: int8 array `[N, K]`: any int8 for bits=8, in [-8, 7] for bits=4.
        scales: float `[N]` (bits=8) or `[N, K // group_size]` (bits=4), finite, of any sign
            (checkpoints from other tools have all-zero groups with scale 0, and negative
            scales: the math does not care).
        zeros: None (symmetric) or, for bits=4 only, float `[N, K // group_size]`:
            `w = q * scale + zero` (with q = u - 8, the form PyTorch's int4 kernels use).
        bits: 8 or 4.
        group_size: required for bits=4: a multiple of 8 that divides K.

    `q` is kept without a copy when nothing can write its memory any more: it is read-only
    and so is every array it views, down to a read-only buffer (`np.load(..., mmap_mode="r")`,
    `np.frombuffer(bytes)`, or an array handed over with `q.setflags(write=False)`). Any
    other `q` is copied, so that changing it later cannot change this weight under its packed
    device copies. Either way `self.q` is read-only.
    """

    def __init__(self, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None = None, *,
                 bits: int, group_size: int | None = None):
        q = np.asarray(q)
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits!r}")
        if q.dtype != np.int8:
            raise TypeError(f"q must be an int8 array, got dtype {q.dtype}")
        if q.ndim != 2 or 0 in q.shape:
            raise ValueError(f"q must be a non-empty [N, K] matrix, got shape {q.shape}")
        n, k = q.shape
        q = q if _read_only(q) else _copy(q)  # before the range check: fail early if too big
        lo, hi = (-128, 127) if bits == 8 else (-8, 7)
        if q.min() < lo or q.max() > hi:
            raise ValueError(f"int{bits} weights must lie in [{lo}, {hi}], found "
                             f"[{int(q.min())}, {int(q.max())}]")
        if bits == 8:
            _check_int8_group_size(group_size, k)
            if zeros is not None:
                raise ValueError("int8 weights are symmetric: zeros must be None")
            scales = _float_array("scales", scales, (n,))
            if k >= INT8_MAX_K:
                raise ValueError(f"K = {k} is too large: int8 x int8 sums may overflow int32 for "
                                 f"K >= {INT8_MAX_K}; split the layer along K")
        else:
            if group_size is None:
                raise ValueError("int4 weights need group_size (a multiple of 8 dividing K)")
            n_groups = check_group_size(group_size, k)
            scales = _float_array("scales", scales, (n, n_groups))
            if zeros is not None:
                zeros = _float_array("zeros", zeros, (n, n_groups))
        self._q = q
        self._scales = scales
        self._zeros = zeros
        self.bits = bits
        self.group_size = int(group_size) if bits == 4 else k
        self._packed: dict[Any, Any] = {}
        for a in (self._q, self._scales, self._zeros):
            if a is not None:
                a.setflags(write=False)

    q = property(lambda self: self._q, doc="int8 quantized values [N, K] (read-only)")
    scales = property(lambda self: self._scales, doc="float32 scales [N] or [N, n_groups]")
    zeros = property(lambda self: self._zeros, doc="float32 zeros [N, n_groups] or None")
    shape = property(lambda self: self._q.shape, doc="logical (N, K)")

    @property
    def n_groups(self) -> int:
        return self.shape[1] // self.group_size

    @property
    def symmetric(self) -> bool:
        return self._zeros is None

    def dequantize(self) -> np.ndarray:
        """float32 `[N, K]` weights the quantized values stand for."""
        if self.bits == 8:
            return self._q.astype(np.float32) * self._scales[:, None]
        s = np.repeat(self._scales, self.group_size, axis=1)
        w = self._q.astype(np.float32) * s
        if self._zeros is not None:
            w += np.repeat(self._zeros, self.group_size, axis=1)
        return w

    def prepacked(self, key: Any, device: Any, build: Callable[[], Any]) -> Any:
        """The device copy an op made of this weight under `key`, built on first use.

        The copy's buffers belong to the device; a copy whose device was closed is rebuilt.
        """
        entry = self._packed.get((key, id(device)))
        if entry is not None and entry[0] is device and device.handle is not None \
                and not getattr(entry[1], "closed", False):
            return entry[1]
        value = build()
        self._packed[(key, id(device))] = (device, value)
        return value

    def release(self) -> None:
        """Free every packed device copy now (they are otherwise freed with their device)."""
        for _, value in self._packed.values():
            close = getattr(value, "close", None)
            if close is not None:
                close()
        self._packed.clear()

    def __repr__(self) -> str:
        extra = "" if self.bits == 8 else f", group_size={self.group_size}, " \
                f"{'symmetric' if self.symmetric else 'asymmetric'}"
        return f"QuantizedWeight(bits={self.bits}, shape={self.shape}{extra})"


#: How int4 scales/zeros may be kept (quantize_weight, and the q4gsw device copy).
PARAM_DTYPES = ("auto", "float16", "float32")


def quantize_weight(w: np.ndarray, bits: int = 8, group_size: int | None = None,
                    symmetric: bool = True, param_dtype: str = "auto", *,
                    device: Any = None) -> QuantizedWeight:
    """Quantize float weights `[N, K]` (docs/design.md §2), rounding half to even.

    bits=8: per output channel, symmetric, q in [-127, 127], scale = max|w| / 127; group_size
    must be left unset (or be K).
    bits=4: per group of `group_size` along K; symmetric: q in [-8, 7], scale = max|w| / 7;
    asymmetric: scale = (max - min) / 15, zero = min + 8 * scale, so u = q + 8 spans [min, max].
    All-zero rows/groups get scale 1, which quantizes them to q = 0 without a 0 / 0.

    param_dtype (bits=4 only): "float16" rounds every scale and zero to an fp16 number before
    the weights are quantized against it (the form int4 checkpoints use; the kernels then
    stream half the parameter bytes); it raises if one falls outside fp16's normal range.
    "auto" (default) does that where every one fits, and keeps float32 otherwise. "float32"
    keeps the float32 values.

    device: a vkq.Device the weight is meant for: its packed buffers are checked against the
    device's limits first, so a layer too large for it fails before any quantization work
    (vkq.linear checks again, before packing, on whatever device it runs).

    Memory: `w` is read (never copied whole) a block of rows at a time, in float64 math, so
    the cost is the int8 result `[N, K]` plus about vkq.layouts.packed.CHUNK_BYTES of
    temporaries; int4 reads `w` twice (all scales must be known to choose their storage).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(f"param_dtype must be one of {PARAM_DTYPES}, got {param_dtype!r}")
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise TypeError(f"weights must be float, got dtype {w.dtype}")
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"weights must be a non-empty [N, K] matrix, got shape {w.shape}")
    n, k = w.shape
    if device is not None:
        _check_fits(device, bits, n, k, group_size, symmetric)
    if bits == 8:
        if not symmetric:
            raise ValueError("int8 weights are symmetric per channel (docs/design.md §2)")
        _check_int8_group_size(group_size, k)
        if param_dtype != "auto":
            raise ValueError(f"param_dtype applies to int4 group parameters; int8 scales are "
                             f"float32: leave it unset, got param_dtype={param_dtype!r}")
        q, s = _new_q(n, k), np.empty(n, np.float32)  # q first: fail before any work
        for rows, block in _row_blocks(w):
            amax = np.abs(block).max(axis=1)
            s[rows] = np.where(amax > 0, amax / 127.0, 1.0)
            q[rows] = np.clip(np.rint(block / s[rows, None]), -127, 127)
        return QuantizedWeight(_handed_over(q), s, bits=8)
    if group_size is None:
        raise ValueError("int4 quantization needs group_size")
    n_groups = check_group_size(group_size, k)
    q = _new_q(n, k)  # first: fail before any work
    s, z = _group_params(*_int4_params(w, n_groups, symmetric), param_dtype)
    for rows, block in _row_blocks(w):
        g = block.reshape(-1, n_groups, group_size)
        if symmetric:
            qg = np.clip(np.rint(g / s[rows, :, None]), -8, 7)
        else:  # u from the stored (rounded) scale and zero: (u - 8) * s + z is nearest to w
            qg = np.clip(np.rint((g - z[rows, :, None]) / s[rows, :, None]) + 8, 0, 15) - 8
        q[rows] = qg.reshape(-1, k)
    return QuantizedWeight(_handed_over(q), s, z, bits=4, group_size=group_size)


def _check_fits(device: Any, bits: int, n: int, k: int, group_size: int | None,
                symmetric: bool) -> None:
    """quantize_weight's early check of the packed sizes against `device`'s buffer limits."""
    if bits == 4:
        if group_size is None:
            raise ValueError("int4 quantization needs group_size")
        check_group_size(group_size, k)
    check_fits(device.caps, weight_needs(bits, (n, k), group_size, not symmetric))


def _int4_params(w: np.ndarray, n_groups: int, symmetric: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 scales (and zeros) `[N, n_groups]` of int4 weights, computed in float64 a block
    of rows at a time and rounded once to float32."""
    n, k = w.shape
    s = np.empty((n, n_groups), np.float32)
    z = None if symmetric else np.empty((n, n_groups), np.float32)
    for rows, block in _row_blocks(w):
        g = block.reshape(-1, n_groups, k // n_groups)
        if symmetric:
            amax = np.abs(g).max(axis=2)
            s[rows] = np.where(amax > 0, amax / 7.0, 1.0)
        else:
            lo, hi = g.min(axis=2), g.max(axis=2)
            s64 = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
            s[rows], z[rows] = s64, lo + 8.0 * s64
    return s, z


def _row_blocks(w: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, float64 copy of w[rows]) over w, about CHUNK_BYTES of float64 at a time;
    refuses NaN/Inf as it goes."""
    for rows in packed.row_chunks(w.shape[0], 8 * w.shape[1]):
        block = w[rows].astype(np.float64)
        if not np.all(np.isfinite(block)):
            bad = int(np.argwhere(~np.isfinite(block))[0][0]) + rows.start
            raise ValueError(f"weights must be finite (row {bad} has NaN or Inf)")
        yield rows, block


def _new_q(n: int, k: int) -> np.ndarray:
    """The uninitialised int8 result `[N, K]`, or a MemoryError that says what was asked for."""
    try:
        return np.empty((n, k), np.int8)
    except MemoryError:
        raise MemoryError(f"quantize_weight needs {n * k} bytes for the int8 values [{n} x {k}] "
                          f"(plus about {packed.CHUNK_BYTES} of temporaries); this host could not "
                          f"allocate them: quantize the layer in slices of rows") from None


def _handed_over(q: np.ndarray) -> np.ndarray:
    """`q`, made read-only: an array nobody else holds, which QuantizedWeight keeps without a
    copy (see there)."""
    q.setflags(write=False)
    return q


def half_group_params(scales: np.ndarray, zeros: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """int4 scales (and zeros) rounded to fp16 numbers, kept as float32 arrays, zeros below
    fp16's normal range flushed to 0; None where a non-zero scale does not round to a normal
    fp16 (it would become 0 or a subnormal) or a value overflows it (vkq.layouts.fits_half)."""
    with np.errstate(over="ignore"):
        s = np.asarray(scales, np.float32).astype(np.float16).astype(np.float32)
        z = None if zeros is None else np.asarray(zeros, np.float32).astype(np.float16).astype(np.float32)
    if z is not None:
        z[np.abs(z) < HALF_MIN_NORMAL] = 0.0
    flushed = (s == 0) & (np.asarray(scales) != 0)  # a scale fp16 cannot tell from 0
    if flushed.any() or not (fits_half(s) and (z is None or fits_half(z))):
        return None
    return s, z


def _group_params(s: np.ndarray, z: np.ndarray | None,
                  param_dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 scales (and zeros) as quantize_weight stores them: rounded to fp16 numbers
    where `param_dtype` asks for it and they fit (half_group_params)."""
    s32 = s.astype(np.float32)
    z32 = None if z is None else z.astype(np.float32)
    if param_dtype == "float32":
        return s32, z32
    half = half_group_params(s32, z32)
    if half is not None:
        return half
    if param_dtype == "float16":
        raise ValueError("param_dtype='float16': a scale or zero falls outside fp16's normal "
                         "range (2^-14 .. 65504); use param_dtype='auto' or 'float32'")
    return s32, z32
