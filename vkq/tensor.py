"""Tensors that stay on the device between ops, in a named layout.

    xd = vkq.to_device(xq, layout="int8_4h4w")     # pack + upload once
    yd = vkq.linear(xd, w, ...)                      # DeviceTensor in -> DeviceTensor out
    zd = vkq.linear(yd, w2, ...)                     # no host round trip between layers
    z = zd.numpy()                                   # download + unpack to the logical array
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq import layouts
from vkq.ops.contract import DENSE, TensorSpec
from vkq.ops.common import check_fits, dense_need, packed_need
from vkq.runtime import Buffer, Device, default_device


class DeviceTensor:
    """Device buffers holding one logical tensor in `format` (a `vkq.layouts` format, or
    "dense" for a plain row-major array of `dtype`). Owns its buffers: `close()` frees them."""

    def __init__(self, device: Device, format: str, shape: tuple[int, ...], dtype: Any,
                 buffers: Mapping[str, Buffer], array_specs: Mapping[str, tuple[tuple[int, ...], Any]],
                 params: Mapping[str, int] | None = None, version: int = 1):
        self.device = device
        self.format = format
        self.version = version
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.buffers = dict(buffers)
        self.array_specs = {k: (tuple(s), np.dtype(d)) for k, (s, d) in array_specs.items()}
        self.params = dict(params or {})

    @classmethod
    def from_spec(cls, device: Device, spec: TensorSpec, buffer: Any) -> "DeviceTensor":
        """A tensor over `buffer` (a Buffer it then owns, or a slice of one) as `spec` says."""
        t = cls.__new__(cls)  # the spec is already normalized: skip __init__'s conversions
        t.device, t.format, t.version = device, spec.layout, 1
        t.shape, t.dtype, t.params = spec.shape, spec.dtype, dict(spec.params)
        t.buffers = {"data": buffer}
        t.array_specs = {"data": (spec.stored_shape, spec.stored_dtype)}
        t._spec = spec
        return t

    @property
    def spec(self) -> TensorSpec:
        spec = self.__dict__.get("_spec")
        if spec is None:
            shape, dtype = self.array_specs["data"]
            spec = self._spec = TensorSpec(self.shape, self.dtype, self.format, shape, dtype,
                                           tuple(sorted(self.params.items())))
        return spec

    @property
    def buffer(self) -> Buffer:
        """The main payload ("data")."""
        return self.buffers["data"]

    @property
    def closed(self) -> bool:
        return any(b.closed for b in self.buffers.values())

    def expect(self, format: str) -> "DeviceTensor":
        if self.format != format:
            hint = layouts.REPACK_HINTS.get(format, "")
            raise layouts.LayoutError(f"device tensor is in layout {self.format!r}, this kernel "
                                      f"needs {format!r}. {hint}")
        return self

    def numpy(self) -> np.ndarray:
        """Download and unpack to the logical array (waits for the work that computes it)."""
        if self.closed:
            raise ValueError("this DeviceTensor has been closed")
        arrays = {k: self.buffers[k].read(d, int(np.prod(s))).reshape(s)
                  for k, (s, d) in self.array_specs.items()}
        if self.format == DENSE:
            return arrays["data"].reshape(self.shape).astype(self.dtype, copy=False)
        packed = layouts.PackedTensor(self.format, self.version, self.shape, arrays, self.params)
        return layouts.UNPACKERS[self.format](packed)

    def close(self) -> None:
        """Free the buffers this tensor owns (a part of a fused output frees nothing: its
        buffer goes when every part is gone). Submitted work that uses them finishes first."""
        for b in self.buffers.values():
            if isinstance(b, Buffer):
                b.close()

    def __enter__(self) -> "DeviceTensor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<vkq DeviceTensor {self.format} shape={self.shape} dtype={self.dtype}>"


def upload_packed(packed: layouts.PackedTensor, dtype: Any, device: Device | None = None) -> DeviceTensor:
    """Upload every array of a packed tensor into its own buffer."""
    device = device or default_device()
    bufs = {k: device.upload(a) for k, a in packed.arrays.items()}
    specs = {k: (a.shape, a.dtype) for k, a in packed.arrays.items()}
    return DeviceTensor(device, packed.format, packed.shape, dtype, bufs, specs, packed.params,
                        packed.version)


_PACKERS = {
    layouts.INT8_4H4W: layouts.pack_int8_4h4w,
    layouts.INT8_4W: layouts.pack_int8_4w,
}


def to_device(x: np.ndarray, layout: str = DENSE, device: Device | None = None) -> DeviceTensor:
    """Copy a host array to the device: "dense" (row-major; float arrays become float32, other dtypes stay), or
    an activation layout of `vkq.layouts` ("int8_4h4w" for GEMM inputs, "int8_4w" for M == 1).
    Leading batch dimensions fold into rows for the packed layouts."""
    device = device or default_device()
    x = np.asarray(x)
    if layout == DENSE:
        # float activations are float32 on the device, as the numpy paths convert them
        data = np.ascontiguousarray(x, dtype=np.float32 if x.dtype.kind == "f" else x.dtype)
        check_fits(device.caps, [dense_need("activations x", data.shape, data.dtype.itemsize)])
        return DeviceTensor(device, DENSE, x.shape, data.dtype, {"data": device.upload(data)},
                            {"data": (data.shape, data.dtype)})
    if layout not in _PACKERS:
        raise ValueError(f"unknown layout {layout!r}; use one of {[DENSE, *_PACKERS]}")
    if x.ndim < 1:
        raise ValueError("an int8 activation needs at least one dimension [..., K]")
    rows = (int(np.prod(x.shape[:-1], dtype=np.int64)), x.shape[-1])
    check_fits(device.caps, [packed_need("int8 activations x", layout, rows)])
    packed = _PACKERS[layout](np.asarray(x).reshape(-1, x.shape[-1]))
    return upload_packed(packed, np.int8, device)
