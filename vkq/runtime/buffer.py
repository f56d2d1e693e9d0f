"""GPU buffers: device-local (uploads/downloads through staging) or host-visible on unified memory."""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from vkq.runtime.vk import check, ffi, lib, new

if TYPE_CHECKING:
    from vkq.runtime.device import Device

#: Buffers are rounded up to this many bytes: keeps every uvec4 read of a tail in bounds and
#: gives zero-byte tensors a valid (non-empty) binding.
BUFFER_ALIGN = 16


def _free(device_handle: Any, buffer: Any, memory: Any, mapped: bool) -> None:
    if mapped:
        lib.vkUnmapMemory(device_handle, memory)
    lib.vkDestroyBuffer(device_handle, buffer, ffi.NULL)
    lib.vkFreeMemory(device_handle, memory, ffi.NULL)


class Buffer:
    """One VkBuffer with its own VkDeviceMemory, owned by this object.

    `close()` (or dropping the last reference, or closing the Device) frees it. Host-visible
    buffers are mapped for their whole life and expose a zero-copy numpy view (`view`).
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
        self.host_visible = caps.unified_memory if host_visible is None else host_visible
        usage_bits = (lib.VK_BUFFER_USAGE_TRANSFER_SRC_BIT | lib.VK_BUFFER_USAGE_TRANSFER_DST_BIT)
        if usage == "storage":
            usage_bits |= lib.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT
        keep: list[Any] = []
        info = new("VkBufferCreateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                   size=size, usage=usage_bits, sharingMode=lib.VK_SHARING_MODE_EXCLUSIVE)
        dev = device.handle
        out = ffi.new("VkBuffer*")
        check(lib.vkCreateBuffer(dev, info, ffi.NULL, out), "vkCreateBuffer")
        self.handle = out[0]
        req = new("VkMemoryRequirements", keep)
        lib.vkGetBufferMemoryRequirements(dev, self.handle, req)
        flags = ((lib.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | lib.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
                 if self.host_visible else lib.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
        try:
            type_index = device.memory_type(req.memoryTypeBits, flags)
            alloc = new("VkMemoryAllocateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                        allocationSize=req.size, memoryTypeIndex=type_index)
            mem = ffi.new("VkDeviceMemory*")
            code = lib.vkAllocateMemory(dev, alloc, ffi.NULL, mem)
            if code in (lib.VK_ERROR_OUT_OF_DEVICE_MEMORY, lib.VK_ERROR_OUT_OF_HOST_MEMORY):
                raise MemoryError(f"out of device memory allocating {nbytes} bytes on {device.caps.name}")
            check(code, "vkAllocateMemory")
        except BaseException:
            lib.vkDestroyBuffer(dev, self.handle, ffi.NULL)
            raise
        self.memory = mem[0]
        check(lib.vkBindBufferMemory(dev, self.handle, self.memory, 0), "vkBindBufferMemory")
        self._ptr = None
        if self.host_visible:
            p = ffi.new("void**")
            check(lib.vkMapMemory(dev, self.memory, 0, size, 0, p), "vkMapMemory")
            self._ptr = p[0]
        self._finalizer = weakref.finalize(self, _free, dev, self.handle, self.memory, self.host_visible)
        device._adopt(self)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the buffer now. The caller must not have a dispatch using it in flight."""
        self._ptr = None
        self._finalizer()

    def view(self, dtype: Any = np.uint8) -> np.ndarray:
        """Zero-copy numpy view of a host-visible buffer (valid until close())."""
        if not self.host_visible or self._ptr is None:
            raise ValueError("only host-visible, open buffers have a zero-copy view")
        raw = np.frombuffer(ffi.buffer(self._ptr, self.size), dtype=np.uint8)
        return raw[: self.nbytes - self.nbytes % np.dtype(dtype).itemsize].view(dtype)

    def write(self, array: np.ndarray, offset: int = 0) -> None:
        """Copy bytes in: directly if host-visible, else through a one-shot staging copy."""
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if offset < 0 or offset + data.size > self.nbytes:
            raise ValueError(f"writing {data.size} bytes at offset {offset} overruns a "
                             f"{self.nbytes}-byte buffer")
        if self.host_visible:
            self.view()[offset: offset + data.size] = data
            return
        with self.device.batch() as b:
            b.upload(self, data, offset)

    def read(self, dtype: Any = np.uint8, count: int | None = None) -> np.ndarray:
        """Copy the buffer's contents out into a new numpy array."""
        itemsize = np.dtype(dtype).itemsize
        count = self.nbytes // itemsize if count is None else count
        if count * itemsize > self.nbytes:
            raise ValueError(f"reading {count} x {dtype} overruns a {self.nbytes}-byte buffer")
        if self.host_visible:
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
