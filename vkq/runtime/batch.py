"""Recording many transfers and dispatches into one command buffer, submitted once.

    with device.batch(timestamps=True) as b:
        b.upload(x_buf, x)
        b.dispatch(kernel, (gx, gy, 1), buffers={"t_out": y_buf, "t_in": x_buf}, push={"n": n})
        y = b.download(y_buf)
    y.result()            # bytes as a numpy uint8 array, valid after the with-block
    b.timings_ns          # one GPU duration per dispatch (timestamps=True)
    b.timestamps_ns       # (start, end) per dispatch, ns from the first start

    with device.batch(timestamps="span") as b: ...
    b.span_ns             # GPU time from the first command's start to the last one's end

Every command is separated from the next by a barrier, since dispatches and copies in a batch
may depend on each other. The barrier is as narrow as the pair of commands allows (a dispatch
after a dispatch waits for compute-shader writes only, not for every stage and memory access):
on the H100 a full ALL_COMMANDS/MEMORY barrier made each link of a dispatch chain cost
about 3 us more than the dispatch itself.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from vkq.runtime.buffer import Buffer
from vkq.runtime.kernel import Kernel
from vkq.runtime.trace import note_dispatch
from vkq.runtime.vk import check, ffi, lib, new

if TYPE_CHECKING:
    from vkq.runtime.device import Device


@dataclasses.dataclass
class _Dispatch:
    kernel: Kernel
    groups: tuple[int, int, int]
    buffers: list[Buffer]
    push: bytes


@dataclasses.dataclass
class _Copy:
    src: Buffer
    dst: Buffer
    nbytes: int
    src_offset: int = 0
    dst_offset: int = 0


class Download:
    """Bytes that a batch copies out of a buffer; readable once the batch has completed."""

    def __init__(self, staging: Buffer | None, source: Buffer, nbytes: int):
        self._staging, self._source, self.nbytes = staging, source, nbytes
        self._data: np.ndarray | None = None

    def _collect(self) -> None:
        buf = self._staging or self._source
        self._data = buf.view()[: self.nbytes].copy()

    def result(self) -> np.ndarray:
        if self._data is None:
            raise RuntimeError("the batch holding this download has not been submitted yet")
        return self._data


class _Barriers:
    """The barrier between two consecutive commands: the earlier one's writes become visible
    to the later one's reads and writes, and the later one waits for the earlier one's reads
    (write-after-read), at the pipeline stages the two actually use."""

    _STAGE = {_Dispatch: lib.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, _Copy: lib.VK_PIPELINE_STAGE_TRANSFER_BIT}
    _WRITE = {_Dispatch: lib.VK_ACCESS_SHADER_WRITE_BIT, _Copy: lib.VK_ACCESS_TRANSFER_WRITE_BIT}
    _READ_WRITE = {_Dispatch: lib.VK_ACCESS_SHADER_READ_BIT | lib.VK_ACCESS_SHADER_WRITE_BIT,
                   _Copy: lib.VK_ACCESS_TRANSFER_READ_BIT | lib.VK_ACCESS_TRANSFER_WRITE_BIT}

    def __init__(self, keep: list[Any]):
        self._structs: dict[tuple[type, type], Any] = {}
        for a in (_Dispatch, _Copy):
            for b in (_Dispatch, _Copy):
                self._structs[a, b] = new("VkMemoryBarrier", keep,
                                          sType=lib.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                                          srcAccessMask=self._WRITE[a], dstAccessMask=self._READ_WRITE[b])

    def record(self, cmd: Any, before: "_Dispatch | _Copy", after: "_Dispatch | _Copy") -> None:
        a, b = type(before), type(after)
        lib.vkCmdPipelineBarrier(cmd, self._STAGE[a], self._STAGE[b], 0, 1, self._structs[a, b],
                                 0, ffi.NULL, 0, ffi.NULL)


class CommandBatch:
    """Collects commands, then records, submits and waits for them in `submit()`."""

    def __init__(self, device: "Device", timestamps: bool | str = False):
        if timestamps not in (False, True, "span"):
            raise ValueError(f"timestamps must be False, True (per dispatch) or 'span', got {timestamps!r}")
        if timestamps and not device.caps.timestamps:
            raise RuntimeError(f"{device.caps.name} has no compute-queue timestamps")
        self.device = device
        self.timestamps = timestamps
        self.span_ns: float | None = None
        self._ops: list[_Dispatch | _Copy] = []
        self._staging: list[Buffer] = []
        self._downloads: list[Download] = []
        self.timestamps_ns: list[tuple[float, float]] = []
        self.kernel_names: list[str] = []
        self._submitted = False

    # -- collecting ------------------------------------------------------------------------
    def upload(self, dst: Buffer, array: np.ndarray, offset: int = 0) -> None:
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if offset + data.size > dst.nbytes:
            raise ValueError(f"upload of {data.size} bytes at {offset} overruns a {dst.nbytes}-byte buffer")
        if dst.host_visible:  # unified memory: write in place, nothing to record
            dst.view()[offset: offset + data.size] = data
            return
        staging = self._staging_buffer(data.size)
        staging.view()[: data.size] = data
        self._ops.append(_Copy(staging, dst, data.size, 0, offset))

    def download(self, src: Buffer, nbytes: int | None = None) -> Download:
        nbytes = src.nbytes if nbytes is None else nbytes
        if src.host_visible:
            d = Download(None, src, nbytes)
        else:
            staging = self._staging_buffer(nbytes)
            self._ops.append(_Copy(src, staging, nbytes))
            d = Download(staging, src, nbytes)
        self._downloads.append(d)
        return d

    def copy(self, src: Buffer, dst: Buffer, nbytes: int | None = None) -> None:
        nbytes = min(src.nbytes, dst.nbytes) if nbytes is None else nbytes
        self._ops.append(_Copy(src, dst, nbytes))

    def dispatch(self, kernel: Kernel, groups: tuple[int, int, int], *,
                 buffers: Mapping[str, Buffer], push: Mapping[str, Any] | None = None) -> None:
        names = [b["name"] for b in kernel.info.bindings]
        if set(buffers) != set(names):
            raise ValueError(f"{kernel.name}: buffers {sorted(buffers)} do not match the declared "
                             f"bindings {names}")
        for n in names:
            if buffers[n].closed:
                raise ValueError(f"{kernel.name}: buffer {n!r} is closed")
        groups = tuple(int(g) for g in groups) + (1,) * (3 - len(groups))
        limit = self.device.caps.max_workgroup_count
        if any(g < 0 or g > lim for g, lim in zip(groups, limit)):
            raise ValueError(f"{kernel.name}: workgroup count {groups} outside the device limit {limit}")
        push_bytes = kernel.pack_push_constants(push or {})
        self._ops.append(_Dispatch(kernel, groups, [buffers[n] for n in names], push_bytes))
        self.kernel_names.append(kernel.name)
        note_dispatch(kernel.name)

    @property
    def timings_ns(self) -> list[float]:
        """GPU duration of each dispatch (timestamps=True)."""
        return [end - start for start, end in self.timestamps_ns]

    def _staging_buffer(self, nbytes: int) -> Buffer:
        buf = Buffer(self.device, nbytes, host_visible=True, usage="transfer")
        self._staging.append(buf)
        return buf

    # -- recording and submitting ------------------------------------------------------------
    def submit(self) -> None:
        """Record everything into one command buffer, submit it, and wait for completion."""
        if self._submitted:
            raise RuntimeError("a CommandBatch can be submitted once")
        self._submitted = True
        try:
            if any(isinstance(op, _Dispatch) or op.nbytes for op in self._ops):
                self._run()
            for d in self._downloads:
                d._collect()
        finally:
            for buf in self._staging:
                buf.close()
            self._staging.clear()

    def _run(self) -> None:
        dev = self.device
        dispatches = [op for op in self._ops if isinstance(op, _Dispatch)]
        keep: list[Any] = []
        pool = self._descriptor_pool(dispatches, keep)
        queries = None
        cmd = dev._allocate_command_buffer()
        try:
            sets = self._descriptor_sets(pool, dispatches, keep)
            n_pairs = 1 if self.timestamps == "span" else len(dispatches)
            if self.timestamps and dispatches:
                queries = dev._query_pool(2 * n_pairs)
            begin = new("VkCommandBufferBeginInfo", keep,
                        sType=lib.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                        flags=lib.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT)
            check(lib.vkBeginCommandBuffer(cmd, begin), "vkBeginCommandBuffer")
            if queries is not None:
                lib.vkCmdResetQueryPool(cmd, queries, 0, 2 * n_pairs)
            self._record(cmd, dispatches, sets, queries, keep)
            check(lib.vkEndCommandBuffer(cmd), "vkEndCommandBuffer")
            dev._submit_and_wait(cmd)
            if queries is not None:
                stamps = dev._read_timestamps(queries, n_pairs)
                if self.timestamps == "span":
                    self.span_ns = stamps[0][1] - stamps[0][0]
                else:
                    self.timestamps_ns = stamps
        finally:
            dev._free_command_buffer(cmd)
            if pool is not None:
                lib.vkDestroyDescriptorPool(dev.handle, pool, ffi.NULL)
            if queries is not None:
                lib.vkDestroyQueryPool(dev.handle, queries, ffi.NULL)

    def _record(self, cmd: Any, dispatches: list[_Dispatch], sets: list[Any],
                queries: Any, keep: list[Any]) -> None:
        barriers = _Barriers(keep)
        per_dispatch = queries is not None and self.timestamps is True
        if queries is not None and not per_dispatch:
            lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, queries, 0)
        d_index = 0
        for i, op in enumerate(self._ops):
            if i:
                barriers.record(cmd, self._ops[i - 1], op)
            if isinstance(op, _Copy):
                if op.nbytes:
                    region = new("VkBufferCopy", keep, srcOffset=op.src_offset,
                                 dstOffset=op.dst_offset, size=op.nbytes)
                    lib.vkCmdCopyBuffer(cmd, op.src.handle, op.dst.handle, 1, region)
                continue
            k = op.kernel
            lib.vkCmdBindPipeline(cmd, lib.VK_PIPELINE_BIND_POINT_COMPUTE, k.pipeline)
            set_arr = ffi.new("VkDescriptorSet[]", [sets[d_index]])
            keep.append(set_arr)
            lib.vkCmdBindDescriptorSets(cmd, lib.VK_PIPELINE_BIND_POINT_COMPUTE, k.layout, 0, 1,
                                        set_arr, 0, ffi.NULL)
            if op.push:
                blob = ffi.new("char[]", op.push)
                keep.append(blob)
                lib.vkCmdPushConstants(cmd, k.layout, lib.VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                       len(op.push), blob)
            if per_dispatch:
                lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, queries, 2 * d_index)
            if all(op.groups):
                lib.vkCmdDispatch(cmd, *op.groups)
            if per_dispatch:
                lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, queries,
                                        2 * d_index + 1)
            d_index += 1
        if queries is not None and not per_dispatch:
            lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, queries, 1)
        host = new("VkMemoryBarrier", keep, sType=lib.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                   srcAccessMask=lib.VK_ACCESS_MEMORY_WRITE_BIT, dstAccessMask=lib.VK_ACCESS_HOST_READ_BIT)
        lib.vkCmdPipelineBarrier(cmd, lib.VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                                 lib.VK_PIPELINE_STAGE_HOST_BIT, 0, 1, host, 0, ffi.NULL, 0, ffi.NULL)

    def _descriptor_pool(self, dispatches: list[_Dispatch], keep: list[Any]) -> Any:
        n_desc = sum(len(d.buffers) for d in dispatches)
        if not dispatches:
            return None
        size = new("VkDescriptorPoolSize", keep, type=lib.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                   descriptorCount=max(n_desc, 1))
        info = new("VkDescriptorPoolCreateInfo", keep,
                   sType=lib.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                   maxSets=len(dispatches), poolSizeCount=1, pPoolSizes=size)
        out = ffi.new("VkDescriptorPool*")
        check(lib.vkCreateDescriptorPool(self.device.handle, info, ffi.NULL, out), "vkCreateDescriptorPool")
        return out[0]

    def _descriptor_sets(self, pool: Any, dispatches: list[_Dispatch], keep: list[Any]) -> list[Any]:
        if not dispatches:
            return []
        layouts = ffi.new("VkDescriptorSetLayout[]", [d.kernel.set_layout for d in dispatches])
        info = new("VkDescriptorSetAllocateInfo", keep,
                   sType=lib.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                   descriptorPool=pool, descriptorSetCount=len(dispatches), pSetLayouts=layouts)
        sets = ffi.new("VkDescriptorSet[]", len(dispatches))
        keep.extend([layouts, sets])
        check(lib.vkAllocateDescriptorSets(self.device.handle, info, sets), "vkAllocateDescriptorSets")
        n_writes = sum(len(d.buffers) for d in dispatches)
        if n_writes:
            infos = ffi.new("VkDescriptorBufferInfo[]", n_writes)
            writes = ffi.new("VkWriteDescriptorSet[]", n_writes)
            keep.extend([infos, writes])
            w = 0
            for s, d in enumerate(dispatches):
                for binding, buf in enumerate(d.buffers):
                    infos[w].buffer = buf.handle
                    infos[w].offset = 0
                    infos[w].range = buf.size  # explicit: VK_WHOLE_SIZE overflows in the binding
                    writes[w].sType = lib.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
                    writes[w].dstSet = sets[s]
                    writes[w].dstBinding = binding
                    writes[w].descriptorCount = 1
                    writes[w].descriptorType = lib.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                    writes[w].pBufferInfo = infos + w
                    w += 1
            lib.vkUpdateDescriptorSets(self.device.handle, n_writes, writes, 0, ffi.NULL)
        return [sets[i] for i in range(len(dispatches))]

    def __enter__(self) -> "CommandBatch":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.submit()
        else:
            for buf in self._staging:
                buf.close()
