"""The logical device: queue, command pool, kernels and buffers, and the process default."""
from __future__ import annotations

import atexit
import weakref
from typing import Any

import numpy as np

from vkq import shaderlib
from vkq.runtime import env
from vkq.runtime.batch import CommandBatch
from vkq.runtime.buffer import Buffer
from vkq.runtime.capabilities import (PIPELINE_STATISTICS_EXTENSION, Capabilities,
                                      compute_queue_family, timestamp_valid_bits)
from vkq.runtime.instance import Instance, choose_device
from vkq.runtime.kernel import Kernel
from vkq.runtime.vk import VulkanError, check, cstrings, ffi, lib, new


class UnsupportedDevice(RuntimeError):
    """The device lacks a feature that the requested kernel variant needs."""


class Device:
    """A Vulkan logical device with one compute queue.

    Owns every Buffer and Kernel created on it: `close()` destroys what is still alive, then
    the device (and the instance, when the device created it). Use as a context manager, or
    let `default_device()` own one for the process. Not thread-safe: use one per thread.
    `selector` is a device index or name substring (default `$VKQ_DEVICE`, else the best
    device); `selector_origin` is what the error calls it when it matches none ("--device").
    """

    def __init__(self, selector: str | None = None, *, validation: bool | None = None,
                 instance: Instance | None = None, selector_origin: str = "selector"):
        self._timeout_ns = env.timeout_ns()  # read once, so a bad value fails before any work
        self._own_instance = instance is None
        self.instance = instance or Instance(validation=validation)
        self._children: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._kernels: dict[tuple[str, tuple[tuple[str, Any], ...]], Kernel] = {}
        self.handle = None
        try:
            self.index, self.physical, self.caps = choose_device(
                self.instance.devices(), selector, selector_origin)
            self._create(self.physical, self.caps)
        except BaseException:
            if self._own_instance:
                self.instance.close()
            raise

    def _create(self, physical: Any, caps: Capabilities) -> None:
        keep: list[Any] = []
        self.queue_family = compute_queue_family(physical)
        self._timestamp_mask = (1 << timestamp_valid_bits(physical)) - 1 if caps.timestamps else 0
        priority = ffi.new("float[]", [1.0])
        keep.append(priority)
        queue_info = new("VkDeviceQueueCreateInfo", keep,
                         sType=lib.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                         queueFamilyIndex=self.queue_family, queueCount=1, pQueuePriorities=priority)
        # Enable exactly the optional features the device reports (Capabilities).
        f11 = new("VkPhysicalDeviceVulkan11Features", keep,
                  sType=lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                  storageBuffer16BitAccess=caps.storage_16bit)
        f12 = new("VkPhysicalDeviceVulkan12Features", keep,
                  sType=lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                  storageBuffer8BitAccess=caps.storage_8bit, shaderInt8=caps.shader_int8,
                  shaderFloat16=caps.shader_float16, pNext=f11)
        head = f12
        if caps.api_version >= (1, 3, 0):
            head = new("VkPhysicalDeviceVulkan13Features", keep,
                       sType=lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES,
                       shaderIntegerDotProduct=caps.integer_dot_product,
                       subgroupSizeControl=caps.subgroup_size_control, pNext=f12)
        extensions: list[str] = []
        if caps.pipeline_statistics:  # compiler statistics for Kernel.statistics()
            extensions.append(PIPELINE_STATISTICS_EXTENSION)
            head = new("VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR", keep,
                       sType=lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR,
                       pipelineExecutableInfo=1, pNext=head)
        info = new("VkDeviceCreateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                   pNext=head, queueCreateInfoCount=1, pQueueCreateInfos=queue_info,
                   enabledExtensionCount=len(extensions),
                   ppEnabledExtensionNames=cstrings(extensions, keep))
        out = ffi.new("VkDevice*")
        check(lib.vkCreateDevice(physical, info, ffi.NULL, out), "vkCreateDevice")
        self.handle = out[0]
        q = ffi.new("VkQueue*")
        lib.vkGetDeviceQueue(self.handle, self.queue_family, 0, q)
        self.queue = q[0]
        pool_info = new("VkCommandPoolCreateInfo", keep,
                        sType=lib.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                        flags=lib.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                        queueFamilyIndex=self.queue_family)
        pool = ffi.new("VkCommandPool*")
        check(lib.vkCreateCommandPool(self.handle, pool_info, ffi.NULL, pool), "vkCreateCommandPool")
        self.command_pool = pool[0]
        cache_info = new("VkPipelineCacheCreateInfo", keep,
                         sType=lib.VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO)
        cache = ffi.new("VkPipelineCache*")
        check(lib.vkCreatePipelineCache(self.handle, cache_info, ffi.NULL, cache), "vkCreatePipelineCache")
        self.pipeline_cache = cache[0]
        mem = new("VkPhysicalDeviceMemoryProperties", keep)
        lib.vkGetPhysicalDeviceMemoryProperties(physical, mem)
        self._memory_types = [(int(mem.memoryTypes[i].propertyFlags), int(mem.memoryTypes[i].heapIndex))
                              for i in range(mem.memoryTypeCount)]

    # -- children -----------------------------------------------------------------------------
    def _adopt(self, child: Any) -> None:
        self._check_open()
        self._children.add(child)

    def _check_open(self) -> None:
        if self.handle is None:
            raise RuntimeError("this vkq Device is closed")

    def memory_type(self, type_bits: int, flags: int) -> int:
        """First memory type allowed by type_bits with all `flags` (host-cached preferred for
        host-visible memory: downloads read it)."""
        candidates = [i for i, (f, _) in enumerate(self._memory_types)
                      if type_bits & (1 << i) and (f & flags) == flags]
        if not candidates:
            raise MemoryError(f"{self.caps.name}: no memory type with flags {flags:#x}")
        cached = lib.VK_MEMORY_PROPERTY_HOST_CACHED_BIT
        if flags & lib.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT:
            candidates.sort(key=lambda i: not (self._memory_types[i][0] & cached))
        return candidates[0]

    def buffer(self, nbytes: int, *, host_visible: bool | None = None) -> Buffer:
        """A storage buffer of nbytes (device-local unless memory is unified)."""
        return Buffer(self, nbytes, host_visible=host_visible)

    def upload(self, array: Any) -> Buffer:
        """A new storage buffer holding a copy of the array's bytes."""
        data = np.ascontiguousarray(array)
        buf = Buffer(self, data.nbytes)
        buf.write(data)
        return buf

    def supports(self, feature: str) -> bool:
        return bool(getattr(self.caps, feature))

    def kernel(self, variant: str, **spec: Any) -> Kernel:
        """The pipeline for a shader variant (+ specialization constants), built once and cached."""
        self._check_open()
        key = (variant, tuple(sorted(spec.items())))
        k = self._kernels.get(key)
        if k is None:
            info = shaderlib.variant_info(variant)
            missing = [f for f in info.requires if not self.supports(f)]
            if missing:
                raise UnsupportedDevice(f"kernel {variant!r} needs {', '.join(missing)}, which "
                                        f"{self.caps.name} does not support")
            info, spirv = shaderlib.load_spirv(variant)
            k = self._kernels[key] = Kernel(self, info, spirv, spec)
        return k

    def batch(self, timestamps: bool = False) -> CommandBatch:
        self._check_open()
        return CommandBatch(self, timestamps=timestamps)

    # -- submission helpers used by CommandBatch ------------------------------------------
    def _allocate_command_buffer(self) -> Any:
        keep: list[Any] = []
        info = new("VkCommandBufferAllocateInfo", keep,
                   sType=lib.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                   commandPool=self.command_pool, level=lib.VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                   commandBufferCount=1)
        out = ffi.new("VkCommandBuffer[]", 1)
        check(lib.vkAllocateCommandBuffers(self.handle, info, out), "vkAllocateCommandBuffers")
        return out[0]

    def _free_command_buffer(self, cmd: Any) -> None:
        arr = ffi.new("VkCommandBuffer[]", [cmd])
        lib.vkFreeCommandBuffers(self.handle, self.command_pool, 1, arr)

    def _submit_and_wait(self, cmd: Any) -> None:
        keep: list[Any] = []
        fence_info = new("VkFenceCreateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO)
        fence = ffi.new("VkFence*")
        check(lib.vkCreateFence(self.handle, fence_info, ffi.NULL, fence), "vkCreateFence")
        try:
            cmds = ffi.new("VkCommandBuffer[]", [cmd])
            submit = new("VkSubmitInfo", keep, sType=lib.VK_STRUCTURE_TYPE_SUBMIT_INFO,
                         commandBufferCount=1, pCommandBuffers=cmds)
            keep.append(cmds)
            check(lib.vkQueueSubmit(self.queue, 1, submit, fence[0]), "vkQueueSubmit")
            try:
                code = lib.vkWaitForFences(self.handle, 1, fence, 1, self._timeout_ns)
            except BaseException:
                # Never free a command buffer or its buffers while the GPU may still use them
                # (KeyboardInterrupt included): that is a crash, not an error message.
                lib.vkQueueWaitIdle(self.queue)
                raise
            if code == lib.VK_TIMEOUT:
                lib.vkQueueWaitIdle(self.queue)
                raise TimeoutError(f"GPU work did not finish within VKQ_TIMEOUT_S "
                                   f"({self._timeout_ns / 1e9:g} s)")
            check(code, "vkWaitForFences")
        finally:
            lib.vkDestroyFence(self.handle, fence[0], ffi.NULL)

    def _query_pool(self, count: int) -> Any:
        keep: list[Any] = []
        info = new("VkQueryPoolCreateInfo", keep, sType=lib.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                   queryType=lib.VK_QUERY_TYPE_TIMESTAMP, queryCount=count)
        out = ffi.new("VkQueryPool*")
        check(lib.vkCreateQueryPool(self.handle, info, ffi.NULL, out), "vkCreateQueryPool")
        return out[0]

    def _read_timestamps(self, pool: Any, n_dispatches: int) -> list[tuple[float, float]]:
        """(start, end) of each dispatch in ns, relative to the first start."""
        n = 2 * n_dispatches
        data = ffi.new("uint64_t[]", n)
        flags = lib.VK_QUERY_RESULT_64_BIT | lib.VK_QUERY_RESULT_WAIT_BIT
        check(lib.vkGetQueryPoolResults(self.handle, pool, 0, n, 8 * n, data, 8, flags),
              "vkGetQueryPoolResults")
        mask, period = self._timestamp_mask, self.caps.timestamp_period_ns
        t0 = data[0]
        return [(((data[2 * i] - t0) & mask) * period, ((data[2 * i + 1] - t0) & mask) * period)
                for i in range(n_dispatches)]

    # -- lifetime -------------------------------------------------------------------------------
    def live_objects(self) -> int:
        """How many buffers/kernels created on this device are still alive (for leak tests)."""
        return len(self._children)

    def close(self) -> None:
        if self.handle is None:
            return
        lib.vkDeviceWaitIdle(self.handle)
        for child in list(self._children):
            child.close()
        self._kernels.clear()
        lib.vkDestroyPipelineCache(self.handle, self.pipeline_cache, ffi.NULL)
        lib.vkDestroyCommandPool(self.handle, self.command_pool, ffi.NULL)
        lib.vkDestroyDevice(self.handle, ffi.NULL)
        self.handle = None
        if self._own_instance:
            self.instance.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<vkq Device {self.index}: {self.caps.name} ({self.caps.device_type})>"


_default: Device | None = None


def default_device() -> Device:
    """The process-wide device (chosen by `$VKQ_DEVICE`, else the best one), created on first use."""
    global _default
    if _default is None or _default.handle is None:
        _default = Device()
    return _default


def set_default_device(device: Device | None) -> None:
    """Make `device` the default (None: forget it; the next default_device() opens a new one)."""
    global _default
    _default = device


@atexit.register
def _close_default() -> None:
    if _default is not None:
        try:
            _default.close()
        except VulkanError:
            pass
