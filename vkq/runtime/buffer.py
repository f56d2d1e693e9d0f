"""GPU buffers: device-local (uploads/downloads through staging) or host-visible on unified memory.

A `Buffer` is a range of a VkBuffer: small ones share pooled blocks (vkq.runtime.memory),
large ones own a block. Kernels and copies address it by (handle, offset, nbytes).
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from vkq.runtime.memory import SUBALLOC_MAX, Block, MemoryPool
from vkq.runtime.vk import ffi

if TYPE_CHECKING:
    from vkq.runtime.device import Device

#: Buffers are rounded up to this many bytes: keeps every uvec4 read of a tail in bounds and
#: gives zero-byte tensors a valid (non-empty) binding.
BUFFER_ALIGN = 16


def _release(device_ref: "weakref.ref[Device]", pool: MemoryPool | None, block: Block,
             offset: int, size: int) -> None:
    """Give a range back (or free an own block) once no submitted work can still use it."""
    device = device_ref()
    if device is None or device.handle is None:
        return  # the device freed every block when it closed
    if pool is None:
        device.retire(block.free)
    else:
        device.retire(lambda: pool.release(block, offset, size))


class Buffer:
    """`nbytes` of GPU memory owned by this object: a range of a pooled block, or a block of
    its own for large sizes.

    `close()` (or dropping the last reference, or closing the Device) frees it; the memory is
    reused only after the work submitted before the close has finished. Host-visible buffers
    expose a zero-copy numpy view (`view`).
    """

    def __init__(self, device: "Device", nbytes: int, *, host_visible: bool | None = None,
                 usage: str = "storage"):
        device._check_open()
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"buffer size must be >= 0, got {nbytes}")
        caps = device.caps
        size = max(BUFFER_ALIGN, -(-nbytes // BUFFER_ALIGN) * BUFFER_ALIGN)
        if usage == "storage" and size > caps.max_storage_buffer_range:
            raise ValueError(f"a {nbytes}-byte buffer exceeds this device's maxStorageBufferRange "
                             f"({caps.max_storage_buffer_range} bytes)")
        if size > caps.max_memory_allocation_size:
            raise ValueError(f"a {nbytes}-byte buffer exceeds this device's maxMemoryAllocationSize "
                             f"({caps.max_memory_allocation_size} bytes)")
        self.device = device
        self.nbytes = nbytes
        self.size = size
        self.host_visible = caps.unified_memory if host_visible is None else bool(host_visible)
        pool = device._pool(self.host_visible) if size <= SUBALLOC_MAX else None
        if pool is not None:
            block, self.offset, reserved = pool.allocate(size)
        else:
            block, self.offset, reserved = Block(device, size, self.host_visible, usage), 0, size
        self._block = block
        self.handle = block.handle
        #: (block identity, first byte, end): what hazard tracking compares
        self.key = block.key
        self._finalizer = weakref.finalize(self, _release, weakref.ref(device), pool, block,
                                           self.offset, reserved)
        device._adopt(self)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the buffer. Work already submitted that uses it finishes first."""
        if self._finalizer.alive:
            self.device.buffer_closes += 1  # graphs re-check their weights when this moves
        self._finalizer()

    def _check_usable(self) -> None:
        if self.closed:
            raise ValueError("this buffer is closed")

    def view(self, dtype: Any = np.uint8) -> np.ndarray:
        """Zero-copy numpy view of a host-visible buffer (valid until close()). The caller
        synchronizes with GPU work (`Device.synchronize`); `read`/`write` do it themselves."""
        if not self.host_visible or self.closed or self._block.ptr is None:
            raise ValueError("only host-visible, open buffers have a zero-copy view")
        ptr = ffi.cast("char *", self._block.ptr) + self.offset
        raw = np.frombuffer(ffi.buffer(ptr, self.size), dtype=np.uint8)
        return raw[: self.nbytes - self.nbytes % np.dtype(dtype).itemsize].view(dtype)

    def write(self, array: np.ndarray, offset: int = 0) -> None:
        """Copy bytes in: directly if host-visible, else through a one-shot staging copy."""
        self._check_usable()
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if offset < 0 or offset + data.size > self.nbytes:
            raise ValueError(f"writing {data.size} bytes at offset {offset} overruns a "
                             f"{self.nbytes}-byte buffer")
        if self.host_visible:
            self.device.synchronize()  # earlier submitted work may still read these bytes
            self.view()[offset: offset + data.size] = data
            return
        with self.device.batch() as b:
            b.upload(self, data, offset)

    def read(self, dtype: Any = np.uint8, count: int | None = None) -> np.ndarray:
        """Copy the buffer's contents out into a new numpy array (after submitted work)."""
        self._check_usable()
        itemsize = np.dtype(dtype).itemsize
        count = self.nbytes // itemsize if count is None else count
        if count * itemsize > self.nbytes:
            raise ValueError(f"reading {count} x {dtype} overruns a {self.nbytes}-byte buffer")
        if self.host_visible:
            self.device.synchronize()
            return self.view(dtype)[:count].copy()
        with self.device.batch() as b:
            handle = b.download(self, count * itemsize)
        return handle.result().view(dtype)

    def __enter__(self) -> "Buffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "host-visible" if self.host_visible else "device-local"
        return f"<vkq Buffer {self.nbytes} bytes {kind}{' closed' if self.closed else ''}>"


class BufferSlice:
    """`nbytes` at byte `offset` of a Buffer, addressed like a Buffer by commands (graph arena
    values, the per-projection parts of a fused output). Owns nothing: valid while its base is.
    Bound as a storage buffer, `offset` must be a multiple of the device's
    minStorageBufferOffsetAlignment (vkq.runtime.memory.RANGE_ALIGN always is)."""

    def __init__(self, base: "Buffer", offset: int, nbytes: int):
        if offset < 0 or nbytes < 0 or offset + nbytes > base.size:
            raise ValueError(f"slice [{offset}, {offset + nbytes}) is outside a {base.size}-byte buffer")
        self.base = base
        self.device = base.device
        self.handle = base.handle
        self.key = base.key
        self.offset = base.offset + offset
        self.rel_offset = offset
        self.nbytes = nbytes
        self.size = min(max(BUFFER_ALIGN, -(-nbytes // BUFFER_ALIGN) * BUFFER_ALIGN), base.size - offset)
        self.host_visible = base.host_visible

    @property
    def closed(self) -> bool:
        return self.base.closed

    def close(self) -> None:
        """A slice owns nothing: its base is freed by its owner."""

    def view(self, dtype: Any = np.uint8) -> np.ndarray:
        raw = self.base.view()[self.rel_offset: self.rel_offset + self.nbytes]
        return raw[: self.nbytes - self.nbytes % np.dtype(dtype).itemsize].view(dtype)

    def read(self, dtype: Any = np.uint8, count: int | None = None) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        count = self.nbytes // itemsize if count is None else count
        if count * itemsize > self.nbytes:
            raise ValueError(f"reading {count} x {dtype} overruns a {self.nbytes}-byte slice")
        with self.device.batch() as b:
            d = b.download(self, count * itemsize)
        return d.result().view(dtype)

    def __repr__(self) -> str:
        return f"<vkq BufferSlice {self.nbytes} bytes at {self.rel_offset} of {self.base!r}>"
