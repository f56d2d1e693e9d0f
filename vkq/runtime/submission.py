"""A reusable one-shot submission: command buffer, fence, descriptor pool and query pool.

Creating these per call cost a large part of an eager op's host time; the device keeps a few
and hands a finished one to the next batch (`Device._acquire_submission`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from vkq.runtime.commands import Dispatch, allocate_descriptor_sets, create_descriptor_pool
from vkq.runtime.vk import check, ffi, lib, new

if TYPE_CHECKING:
    from vkq.runtime.device import Device

#: Descriptor capacity a submission's pool starts with (grown when a batch needs more).
POOL_SETS = 64
POOL_DESCRIPTORS = 512


def create_fence(device_handle: Any) -> Any:
    info = new("VkFenceCreateInfo", None, sType=lib.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO)
    out = ffi.new("VkFence*")
    check(lib.vkCreateFence(device_handle, info, ffi.NULL, out), "vkCreateFence")
    return out[0]


def allocate_command_buffer(device_handle: Any, command_pool: Any) -> Any:
    keep: list[Any] = []
    info = new("VkCommandBufferAllocateInfo", keep,
               sType=lib.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
               commandPool=command_pool, level=lib.VK_COMMAND_BUFFER_LEVEL_PRIMARY,
               commandBufferCount=1)
    out = ffi.new("VkCommandBuffer[]", 1)
    check(lib.vkAllocateCommandBuffers(device_handle, info, out), "vkAllocateCommandBuffers")
    return out[0]


def submit_info_for(cmd: Any) -> tuple[Any, Any]:
    """(VkSubmitInfo of one command buffer, the array it points to): keep both alive."""
    cmds = ffi.new("VkCommandBuffer[]", [cmd])
    info = new("VkSubmitInfo", None, sType=lib.VK_STRUCTURE_TYPE_SUBMIT_INFO,
               commandBufferCount=1, pCommandBuffers=cmds)
    return info, cmds


class Submission:
    """Owned by its Device; `keep` holds the cdata the recorded commands point to until the
    GPU is done with them."""

    def __init__(self, device: "Device"):
        self.device = device
        dev = device.handle
        self.cmd = allocate_command_buffer(dev, device.command_pool)
        self.fence_ptr = ffi.new("VkFence*", create_fence(dev))
        self.fence = self.fence_ptr[0]
        self.keep: list[Any] = []
        self._pool = None
        self._capacity = (0, 0)
        self._queries = None
        self._query_count = 0
        self.serial = 0

    def prepare(self, n_sets: int, n_descriptors: int) -> None:
        """Empty the descriptor pool (or make a larger one) for the next batch."""
        dev = self.device.handle
        if self._pool is not None and n_sets <= self._capacity[0] and n_descriptors <= self._capacity[1]:
            lib.vkResetDescriptorPool(dev, self._pool, 0)
            return
        if self._pool is not None:
            lib.vkDestroyDescriptorPool(dev, self._pool, ffi.NULL)
        self._capacity = (max(n_sets, POOL_SETS), max(n_descriptors, POOL_DESCRIPTORS))
        self._pool = create_descriptor_pool(dev, *self._capacity, [])

    def descriptor_sets(self, dispatches: Sequence[Dispatch]) -> list[Any]:
        return allocate_descriptor_sets(self.device.handle, self._pool, dispatches, self.keep)

    def query_pool(self, count: int) -> Any:
        if self._queries is None or self._query_count < count:
            if self._queries is not None:
                lib.vkDestroyQueryPool(self.device.handle, self._queries, ffi.NULL)
            info = new("VkQueryPoolCreateInfo", None, sType=lib.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                       queryType=lib.VK_QUERY_TYPE_TIMESTAMP, queryCount=count)
            out = ffi.new("VkQueryPool*")
            check(lib.vkCreateQueryPool(self.device.handle, info, ffi.NULL, out), "vkCreateQueryPool")
            self._queries, self._query_count = out[0], count
        return self._queries

    def begin(self) -> None:
        info = new("VkCommandBufferBeginInfo", self.keep,
                   sType=lib.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                   flags=lib.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT)
        check(lib.vkBeginCommandBuffer(self.cmd, info), "vkBeginCommandBuffer")

    def end(self) -> None:
        check(lib.vkEndCommandBuffer(self.cmd), "vkEndCommandBuffer")

    def destroy(self) -> None:
        dev = self.device.handle
        if self._pool is not None:
            lib.vkDestroyDescriptorPool(dev, self._pool, ffi.NULL)
        if self._queries is not None:
            lib.vkDestroyQueryPool(dev, self._queries, ffi.NULL)
        lib.vkDestroyFence(dev, self.fence, ffi.NULL)
        arr = ffi.new("VkCommandBuffer[]", [self.cmd])
        lib.vkFreeCommandBuffers(dev, self.device.command_pool, 1, arr)
        self.keep.clear()
