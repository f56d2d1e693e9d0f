"""Device memory: large blocks split into ranges, so a call does not allocate Vulkan memory.

`vkAllocateMemory` and `vkCreateBuffer` per call cost ~0.3 ms of an eager `vkq.linear`
(measured on the H200), and drivers limit how many allocations may exist at once. So a
`Buffer` of up to `SUBALLOC_MAX` bytes is a range of a `Block` (one VkBuffer over one
VkDeviceMemory of `BLOCK_BYTES`), handed out by size class; larger ones get a block of
their own. Descriptors and copies address a range by (VkBuffer, offset, size), so kernels
cannot tell the two apart.

Freeing is deferred while the device has work in flight (`Device.retire`): a range handed
to a later call must not be written by the host (staging) or freed by the driver while an
earlier submission may still read it.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from vkq.runtime.vk import check, ffi, lib, new

if TYPE_CHECKING:
    from vkq.runtime.device import Device

#: Offsets of ranges are multiples of this: >= every device's minStorageBufferOffsetAlignment
#: (the Vulkan spec caps that limit at 256) and a multiple of 16, so uvec4 tails stay in range.
RANGE_ALIGN = 256
#: Ranges up to this size come from shared blocks; larger buffers get a block of their own.
SUBALLOC_MAX = 8 << 20
#: Size of a shared block (well under lavapipe's 128 MiB maxStorageBufferRange).
BLOCK_BYTES = 32 << 20


class Block:
    """One VkBuffer bound to one VkDeviceMemory (mapped for its life when host-visible)."""

    def __init__(self, device: "Device", size: int, host_visible: bool, usage: str):
        caps = device.caps
        self.size = size
        self.host_visible = host_visible
        usage_bits = lib.VK_BUFFER_USAGE_TRANSFER_SRC_BIT | lib.VK_BUFFER_USAGE_TRANSFER_DST_BIT
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
                 if host_visible else lib.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
        try:
            type_index = device.memory_type(req.memoryTypeBits, flags)
            alloc = new("VkMemoryAllocateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                        allocationSize=req.size, memoryTypeIndex=type_index)
            mem = ffi.new("VkDeviceMemory*")
            code = lib.vkAllocateMemory(dev, alloc, ffi.NULL, mem)
            if code in (lib.VK_ERROR_OUT_OF_DEVICE_MEMORY, lib.VK_ERROR_OUT_OF_HOST_MEMORY):
                raise MemoryError(f"out of device memory allocating {size} bytes on {caps.name}")
            check(code, "vkAllocateMemory")
        except BaseException:
            lib.vkDestroyBuffer(dev, self.handle, ffi.NULL)
            raise
        self.memory = mem[0]
        check(lib.vkBindBufferMemory(dev, self.handle, self.memory, 0), "vkBindBufferMemory")
        self.ptr = None
        if host_visible:
            p = ffi.new("void**")
            check(lib.vkMapMemory(dev, self.memory, 0, size, 0, p), "vkMapMemory")
            self.ptr = p[0]
        #: identity of the VkBuffer for hazard tracking (handles are cdata)
        self.key = int(ffi.cast("uintptr_t", self.handle))
        self._finalizer = weakref.finalize(self, _free_block, dev, self.handle, self.memory,
                                           host_visible)

    def free(self) -> None:
        self.ptr = None
        self._finalizer()

    @property
    def freed(self) -> bool:
        return not self._finalizer.alive


def _free_block(device_handle: Any, buffer: Any, memory: Any, mapped: bool) -> None:
    if mapped:
        lib.vkUnmapMemory(device_handle, memory)
    lib.vkDestroyBuffer(device_handle, buffer, ffi.NULL)
    lib.vkFreeMemory(device_handle, memory, ffi.NULL)


def size_class(nbytes: int) -> int:
    """The range size a request of `nbytes` gets: a power of two, at least RANGE_ALIGN."""
    return max(RANGE_ALIGN, 1 << (max(nbytes, 1) - 1).bit_length())


class MemoryPool:
    """Ranges of shared blocks by power-of-two size class, for one memory kind (device-local
    or host-visible) of one device. Blocks are carved front to back; a freed range goes to
    its class's free list and is reused as is (no coalescing: classes keep reuse exact)."""

    def __init__(self, device: "Device", host_visible: bool):
        self.device = device
        self.host_visible = host_visible
        self.blocks: list[Block] = []
        self._free: dict[int, list[tuple[Block, int]]] = {}
        self._tail = 0  # next free offset in the last block

    def allocate(self, nbytes: int) -> tuple[Block, int, int]:
        """(block, offset, size) of a range holding `nbytes` (<= SUBALLOC_MAX)."""
        size = size_class(nbytes)
        free = self._free.get(size)
        if free:
            block, offset = free.pop()
            return block, offset, size
        if not self.blocks or self._tail + size > self.blocks[-1].size:
            self.blocks.append(Block(self.device, BLOCK_BYTES, self.host_visible, "storage"))
            self._tail = 0
        offset = self._tail
        self._tail += size
        return self.blocks[-1], offset, size

    def release(self, block: Block, offset: int, size: int) -> None:
        self._free.setdefault(size, []).append((block, offset))

    @property
    def reserved_bytes(self) -> int:
        return sum(b.size for b in self.blocks)

    def close(self) -> None:
        for b in self.blocks:
            b.free()
        self.blocks.clear()
        self._free.clear()
