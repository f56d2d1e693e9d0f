"""Self-describing packed tensors and the checks shared by every layout.

A :class:`PackedTensor` carries its format name and layout version next to its
arrays, so a kernel handed data packed for another layout refuses it by name
(:meth:`PackedTensor.expect`) instead of computing garbage from arrays whose
shapes happen to match (e.g. ``[N, n_groups]`` vs ``[n_groups, N]`` scales when
``N == n_groups``).

Every layout module registers a repack hint in :data:`REPACK_HINTS` so the
refusal can tell the user which function produces the needed format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

__all__ = [
    "LayoutError",
    "PackedTensor",
    "REPACK_HINTS",
    "register_repack_hint",
]


class LayoutError(ValueError):
    """Packed data is of another format/version than a consumer needs, or is malformed."""


#: format name -> sentence telling the user how to obtain data in that format.
REPACK_HINTS: dict[str, str] = {}


def register_repack_hint(format: str, hint: str) -> None:
    """Record how to produce ``format``; used by :meth:`PackedTensor.expect` errors."""
    REPACK_HINTS[format] = hint


def _frozen_array(a: np.ndarray) -> np.ndarray:
    # A read-only *view* keeps the tensor immutable without flipping the flag on
    # an array the caller may still own and write to.
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class PackedTensor:
    """Arrays in a named GPU layout plus the logical shape they encode.

    ``arrays["data"]`` is the main payload; other entries (e.g. ``"wsum"``,
    ``"scales"``) are layout specific. Arrays are C-contiguous and read-only.
    """

    format: str
    version: int
    shape: tuple[int, ...]
    arrays: Mapping[str, np.ndarray]
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise here so every consumer can rely on contiguous, immutable data
        # and plain-int shapes/params regardless of how the tensor was built.
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(
            self,
            "arrays",
            MappingProxyType({k: _frozen_array(v) for k, v in self.arrays.items()}),
        )
        object.__setattr__(
            self, "params", MappingProxyType({k: int(v) for k, v in self.params.items()})
        )

    @property
    def nbytes(self) -> int:
        """Total bytes of all arrays (what an upload moves)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def expect(self, format: str, version: int = 1) -> PackedTensor:
        """Return ``self`` if it is ``format`` at ``version``, else raise :class:`LayoutError`.

        The message names what was found, what is needed and, from
        :data:`REPACK_HINTS`, the function that produces the needed format.
        """
        if self.format == format and self.version == version:
            return self
        hint = REPACK_HINTS.get(format, f"no packer is registered for '{format}'")
        raise LayoutError(
            f"expected packed format '{format}' v{version}, got '{self.format}' "
            f"v{self.version} (logical shape {self.shape}); {hint}"
        )

    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """Return ``arrays[name]`` after checking its shape and dtype (else :class:`LayoutError`)."""
        if name not in self.arrays:
            raise LayoutError(f"'{self.format}' tensor has no array '{name}' (has {sorted(self.arrays)})")
        a = self.arrays[name]
        if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
            raise LayoutError(
                f"'{self.format}' array '{name}' is {a.dtype}{list(a.shape)}, expected "
                f"{np.dtype(dtype)}{list(shape)} for logical shape {self.shape}"
            )
        return a

    def param(self, name: str) -> int:
        """Return ``params[name]`` or raise :class:`LayoutError` if it is missing."""
        if name not in self.params:
            raise LayoutError(f"'{self.format}' tensor lacks parameter '{name}' (has {sorted(self.params)})")
        return self.params[name]


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints."""
    return -(-a // b)


#: Bytes of temporaries a packer (or vkq.quantize_weight) works through at once: a weight is
#: processed a block of rows at a time, so packing an N x K matrix costs its packed result
#: plus about this much, whatever N x K is.
CHUNK_BYTES = 1 << 24


def row_chunks(n: int, row_bytes: int, multiple: int = 1) -> list[slice]:
    """Slices of ``range(n)`` holding about :data:`CHUNK_BYTES` at ``row_bytes`` per row (at
    least ``multiple`` rows each, every start a multiple of ``multiple``)."""
    rows = max(1, CHUNK_BYTES // max(1, row_bytes * multiple)) * multiple
    return [slice(r, min(r + rows, n)) for r in range(0, n, rows)]


def require_matrix(x: object, dtype: np.dtype | type, name: str) -> np.ndarray:
    """Check that ``x`` is a non-empty 2-D ndarray of exactly ``dtype``; return it.

    Raises TypeError for a wrong type/dtype and ValueError for a wrong ndim or an
    empty dimension. No silent casts: a float or int32 array handed to an int8
    packer is almost always a caller bug (unquantized or unclamped data).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return x


def require_range(x: np.ndarray, lo: int, hi: int, name: str, why: str) -> None:
    """Raise ValueError naming the first offending element if any ``x`` is outside ``[lo, hi]``."""
    if x.min() >= lo and x.max() <= hi:  # no mask arrays the size of x in the usual case
        return
    bad = (x < lo) | (x > hi)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} values must be in [{lo}, {hi}] ({why}); "
            f"{name}{list(idx)} = {int(x[idx])} ({int(bad.sum())} out of range)"
        )


def int32_words(b: np.ndarray) -> np.ndarray:
    """View an 8-bit array whose last axis is 4 as little-endian 32-bit words.

    Returns native-order int32/uint32 with the last axis dropped; byte j of each
    group lands in bits 8j..8j+7 on any host.
    """
    le = np.dtype("<i4") if b.dtype.kind == "i" else np.dtype("<u4")
    words = np.ascontiguousarray(b).view(le)[..., 0]
    return words.astype(le.newbyteorder("="), copy=False)


def word_bytes(w: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Inverse of :func:`int32_words`: split 32-bit words into a trailing axis of 4 bytes."""
    kind = "<i4" if np.dtype(dtype).kind == "i" else "<u4"
    le = np.ascontiguousarray(w).astype(kind, copy=False)
    return le.view(dtype).reshape(*w.shape, 4)
