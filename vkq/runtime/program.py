"""A Program: commands recorded once into a command buffer that is submitted many times.

Graphs (`vkq.graph`) build one: descriptor sets are written and barriers placed once, so a
replay costs one vkQueueSubmit and one fence wait, whatever the number of dispatches.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Sequence

from vkq.runtime.commands import (Command, Dispatch, Timestamps, allocate_descriptor_sets,
                                  create_descriptor_pool, plan_barriers, record_commands)
from vkq.runtime.submission import allocate_command_buffer, create_fence, submit_info_for
from vkq.runtime.vk import check, ffi, lib, new

if TYPE_CHECKING:
    from vkq.runtime.device import Device


def _destroy(dev: Any, command_pool: Any, cmd: Any, fence: Any, pool: Any, queries: Any) -> None:
    arr = ffi.new("VkCommandBuffer[]", [cmd])
    lib.vkFreeCommandBuffers(dev, command_pool, 1, arr)
    lib.vkDestroyFence(dev, fence, ffi.NULL)
    if pool is not None:
        lib.vkDestroyDescriptorPool(dev, pool, ffi.NULL)
    if queries is not None:
        lib.vkDestroyQueryPool(dev, queries, ffi.NULL)


class Program:
    """Owns its command buffer, fence, descriptor pool and query pool (its Device owns it).

    `timestamps`: None, "span" (GPU time of the whole program, `span_ns()`), or "each"
    (per dispatch, `dispatch_ns()`). The commands' buffers must outlive the program; the
    caller checks that before `submit` (a graph checks its weights)."""

    def __init__(self, device: "Device", commands: Sequence[Command], *,
                 timestamps: str | None = None, barriers: Sequence[bool] | None = None):
        device._check_open()
        if timestamps is not None and not device.caps.timestamps:
            timestamps = None
        self.device = device
        self.commands = list(commands)
        dev = device.handle
        keep: list[Any] = []
        dispatches = [c for c in self.commands if isinstance(c, Dispatch)]
        self.labels = [d.label for d in dispatches]
        self.kernel_names = [d.kernel.name for d in dispatches]
        pool = create_descriptor_pool(dev, len(dispatches), sum(len(d.buffers) for d in dispatches), keep)
        cmd = fence = queries = None
        try:
            sets = allocate_descriptor_sets(dev, pool, dispatches, keep)
            cmd = allocate_command_buffer(dev, device.command_pool)
            fence = create_fence(dev)
            n_queries = 0
            stamps = None
            if timestamps is not None:
                n_queries = 2 * (len(dispatches) if timestamps == "each" else 1)
                info = new("VkQueryPoolCreateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                           queryType=lib.VK_QUERY_TYPE_TIMESTAMP, queryCount=max(n_queries, 2))
                out = ffi.new("VkQueryPool*")
                check(lib.vkCreateQueryPool(dev, info, ffi.NULL, out), "vkCreateQueryPool")
                queries = out[0]
                stamps = Timestamps(queries, timestamps)
            begin = new("VkCommandBufferBeginInfo", keep,
                        sType=lib.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO)
            check(lib.vkBeginCommandBuffer(cmd, begin), "vkBeginCommandBuffer")
            if stamps is not None:
                lib.vkCmdResetQueryPool(cmd, queries, 0, max(n_queries, 2))
            self.barriers = plan_barriers(self.commands) if barriers is None else list(barriers)
            self.n_barriers = record_commands(cmd, self.commands, sets, keep, timestamps=stamps,
                                              barriers=self.barriers)
            check(lib.vkEndCommandBuffer(cmd), "vkEndCommandBuffer")
        except BaseException:
            if cmd is not None:
                _destroy(dev, device.command_pool, cmd, fence, pool, queries)
            else:
                lib.vkDestroyDescriptorPool(dev, pool, ffi.NULL)
            raise
        self._keep = keep
        self._cmd = cmd
        self._fence_ptr = ffi.new("VkFence*", fence)
        self._submit_info = submit_info_for(cmd)
        self._timestamps = timestamps
        self._n_queries = n_queries
        self._queries = queries
        self.serial = 0
        self._finalizer = weakref.finalize(self, _destroy, dev, device.command_pool, cmd, fence,
                                           pool, queries)
        device._adopt(self)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def submit(self) -> int:
        """Submit the recorded commands; the previous submission must have finished."""
        if self.closed:
            raise RuntimeError("this program has been closed")
        if self.serial > self.device._completed:
            self.device.wait(self.serial)  # one fence: a program runs once at a time
        self.serial = self.device.submit_commands(self._cmd, self._fence_ptr,
                                                  submit_info=self._submit_info)
        return self.serial

    def run(self) -> None:
        self.device.wait(self.submit())

    def _stamps(self) -> list[tuple[float, float]]:
        if self._queries is None or not self.serial:
            raise RuntimeError("no timestamps: the program has not run, or the device has none")
        self.device.wait(self.serial)
        return self.device._read_timestamps(self._queries, self._n_queries // 2)

    def span_ns(self) -> float:
        """GPU time of the last run, first command's start to the last one's end."""
        stamps = self._stamps()
        return stamps[-1][1] - stamps[0][0]

    def dispatch_ns(self) -> list[float]:
        """GPU time of each dispatch in the last run (timestamps="each")."""
        return [end - start for start, end in self._stamps()]

    def close(self) -> None:
        """Free the program once its last submission has finished."""
        if self.closed:
            return
        if self.device.handle is not None and self.serial > self.device._completed:
            self.device.wait(self.serial)
        self._finalizer()
        self._keep.clear()
