"""The logical device: queue, command pool, kernels and buffers, and the process default."""
from __future__ import annotations

import atexit
import collections
import time
import weakref
from typing import Any, Callable

import numpy as np

from vkq import shaderlib
from vkq.runtime import env
from vkq.runtime.batch import CommandBatch
from vkq.runtime.buffer import Buffer
from vkq.runtime.capabilities import (COOPERATIVE_MATRIX_EXTENSION, PIPELINE_STATISTICS_EXTENSION,
                                      Capabilities, compute_queue_family, timestamp_valid_bits)
from vkq.runtime.instance import Instance, choose_device
from vkq.runtime.kernel import Kernel
from vkq.runtime.memory import MemoryPool
from vkq.runtime.submission import Submission, submit_info_for
from vkq.runtime.vk import VulkanError, check, cstrings, ffi, lib, new

#: How long a wait polls its fence before blocking (seconds): see Device._spin.
SPIN_S = 0.004
#: Eager calls recorded before the open batch is submitted anyway (see Device.open_batch).
OPEN_BATCH_DISPATCHES = 32
#: Finished submissions kept for reuse (more are destroyed).
KEEP_SUBMISSIONS = 8


class _InFlight:
    """Work submitted to the queue: its fence, and what to do once it has finished."""

    __slots__ = ("serial", "fence_ptr", "on_done")

    def __init__(self, serial: int, fence_ptr: Any, on_done: Callable[[], None] | None):
        self.serial, self.fence_ptr, self.on_done = serial, fence_ptr, on_done


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
        self._pools: dict[bool, MemoryPool] = {}
        self._idle_submissions: list[Submission] = []
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._retired: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self.buffer_closes = 0  # Buffer.close() calls so far (graphs watch it)
        self._open: CommandBatch | None = None  # eager calls not submitted yet (open_batch)
        self._flushing = False
        self._serial = 0       # last submitted
        self._completed = 0    # every submission up to this serial has finished
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
                  shaderFloat16=caps.shader_float16, vulkanMemoryModel=caps.vulkan_memory_model,
                  vulkanMemoryModelDeviceScope=caps.vulkan_memory_model,
                  pNext=f11)
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
        if caps.cooperative_matrix:  # tensor cores (the coopmat kernel variants)
            extensions.append(COOPERATIVE_MATRIX_EXTENSION)
            head = new("VkPhysicalDeviceCooperativeMatrixFeaturesKHR", keep,
                       sType=lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR,
                       cooperativeMatrix=1, pNext=head)
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

    def dummy_buffer(self) -> Buffer:
        """A 16-byte buffer bound where an optional input (a bias) is absent; never read."""
        buf = getattr(self, "_dummy", None)
        if buf is None or buf.closed:
            buf = self._dummy = Buffer(self, 16)
        return buf

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
            if info.shared_bytes > self.caps.max_shared_memory:
                raise UnsupportedDevice(f"kernel {variant!r} needs {info.shared_bytes} bytes of "
                                        f"shared memory, {self.caps.name} has "
                                        f"{self.caps.max_shared_memory}")
            info, spirv = shaderlib.load_spirv(variant)
            k = self._kernels[key] = Kernel(self, info, spirv, spec)
        return k

    def batch(self, timestamps: bool | str = False, wait: bool = True) -> CommandBatch:
        """Collect commands, submitted together at the end of the with-block (see CommandBatch)."""
        self._check_open()
        return CommandBatch(self, timestamps=timestamps, wait=wait)

    # -- submissions ------------------------------------------------------------------------
    def _pool(self, host_visible: bool) -> MemoryPool:
        pool = self._pools.get(host_visible)
        if pool is None:
            pool = self._pools[host_visible] = MemoryPool(self, host_visible)
        return pool

    def _acquire_submission(self, n_sets: int, n_descriptors: int) -> Submission:
        """A finished (or new) submission with room for this many descriptor sets."""
        self._check_open()
        self.poll()
        sub = self._idle_submissions.pop() if self._idle_submissions else Submission(self)
        sub.prepare(n_sets, n_descriptors)
        return sub

    def _recycle(self, sub: Submission) -> None:
        sub.keep.clear()
        if len(self._idle_submissions) < KEEP_SUBMISSIONS:
            self._idle_submissions.append(sub)
        else:
            sub.destroy()

    def _submit(self, sub: Submission) -> int:
        """Submit a recorded one-shot submission; it is recycled once it has finished."""
        return self.submit_commands(sub.cmd, sub.fence_ptr, lambda: self._recycle(sub))

    def open_batch(self) -> CommandBatch:
        """The batch that eager calls on DeviceTensors record into: submitted (not waited
        for) when it holds OPEN_BATCH_DISPATCHES dispatches, or before anything else is
        submitted or waited for, so results are read in order. One submission then serves
        many chained calls (each otherwise paid for its own submit, command buffer and fence)."""
        self._check_open()
        if self._open is None:
            self._open = CommandBatch(self, wait=False)
        return self._open

    def flush(self) -> None:
        """Submit the eager calls recorded so far (see open_batch); does not wait."""
        batch, self._open = self._open, None
        if batch is not None:
            self._flushing = True
            try:
                batch.submit()
            finally:
                self._flushing = False

    def _flush_if_full(self) -> None:
        if self._open is not None and len(self._open.kernel_names) >= OPEN_BATCH_DISPATCHES:
            self.flush()

    def submit_commands(self, cmd: Any, fence_ptr: Any, on_done: Callable[[], None] | None = None,
                        submit_info: Any = None) -> int:
        """Submit a recorded command buffer with an unsignaled fence (`VkFence*`); returns
        its serial for `wait`. `on_done` runs once the GPU has finished it. `submit_info`: a
        VkSubmitInfo for `cmd` kept by a caller that submits it again and again. Eager
        calls recorded before (open_batch) are submitted first."""
        self._check_open()
        if self._open is not None and not self._flushing:
            self.flush()
        if submit_info is None:
            submit_info = submit_info_for(cmd)
        check(lib.vkQueueSubmit(self.queue, 1, submit_info[0], fence_ptr[0]), "vkQueueSubmit")
        self._serial += 1
        self._in_flight.append(_InFlight(self._serial, fence_ptr, on_done))
        return self._serial

    def _finish(self, item: _InFlight) -> None:
        lib.vkResetFences(self.handle, 1, item.fence_ptr)
        self._completed = item.serial
        if item.on_done is not None:
            item.on_done()
        while self._retired and self._retired[0][0] <= self._completed:
            self._retired.popleft()[1]()

    def poll(self) -> None:
        """Note finished submissions without waiting (recycles them, frees retired memory)."""
        while self._in_flight:
            item = self._in_flight[0]
            if lib.vkGetFenceStatus(self.handle, item.fence_ptr[0]) != lib.VK_SUCCESS:
                return
            self._in_flight.popleft()
            self._finish(item)

    def wait(self, serial: int | None = None) -> None:
        """Wait until the submission `serial` (default: everything submitted, the eager calls
        recorded so far included) has finished."""
        if serial is None:
            self.flush()
        target = self._serial if serial is None else serial
        while self._in_flight and self._in_flight[0].serial <= target:
            item = self._in_flight[0]
            try:
                code = self._spin(item.fence_ptr[0])
                if code != lib.VK_SUCCESS:
                    code = lib.vkWaitForFences(self.handle, 1, item.fence_ptr, 1, self._timeout_ns)
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
            self._in_flight.popleft()
            self._finish(item)

    def _spin(self, fence: Any) -> int:
        """Poll the fence for up to SPIN_S before blocking: a blocked wait wakes up tens of
        microseconds after the GPU finishes, which short submissions (an eager call, a
        small graph) would pay every time. Returns the last status."""
        code = lib.vkGetFenceStatus(self.handle, fence)
        if code == lib.VK_NOT_READY:
            deadline = time.perf_counter() + SPIN_S
            while code == lib.VK_NOT_READY and time.perf_counter() < deadline:
                code = lib.vkGetFenceStatus(self.handle, fence)
        return code

    def synchronize(self) -> None:
        """Wait for all submitted work."""
        if self.handle is not None:
            self.wait()

    def retire(self, free: Callable[[], None]) -> None:
        """Run `free` (releasing memory or objects) once the work submitted so far has finished."""
        if self._open is not None:  # recorded, not yet submitted: it will be the next serial
            self._retired.append((self._serial + 1, free))
        elif self._in_flight:
            self._retired.append((self._serial, free))
        else:
            free()

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
        """How many buffers/kernels/programs created on this device are still alive (leak tests)."""
        self.poll()
        return len(self._children)

    def memory_stats(self) -> dict[str, int]:
        """Bytes reserved by the pooled blocks (device-local and host-visible)."""
        return {("host_visible" if hv else "device_local"): p.reserved_bytes
                for hv, p in self._pools.items()}

    def close(self) -> None:
        if self.handle is None:
            return
        self.flush()
        lib.vkDeviceWaitIdle(self.handle)
        while self._in_flight:
            self._finish(self._in_flight.popleft())
        for child in list(self._children):
            child.close()
        while self._retired:
            self._retired.popleft()[1]()
        self._kernels.clear()
        for sub in self._idle_submissions:
            sub.destroy()
        self._idle_submissions.clear()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
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
