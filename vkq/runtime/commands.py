"""Commands (dispatches, copies) and how they are recorded into a command buffer.

Both the one-shot `CommandBatch` and the replayable `Program` (graphs) record through
`record_commands`, so they place barriers the same way: a barrier goes before a command only
when it touches bytes that an earlier command since the last barrier wrote (read-after-write,
write-after-write) or read (write-after-read), compared by (VkBuffer, byte range). Independent
dispatches (the q, k and v projections of one layer) therefore run without a barrier between
them. The barrier waits for the stages that ran since the last one and makes their writes
visible to compute and transfer (not ALL_COMMANDS/MEMORY, which on the H100 made each link
of a dispatch chain cost about 3 us more).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from vkq.runtime.vk import check, ffi, lib, new

if TYPE_CHECKING:
    from vkq.runtime.kernel import Kernel

_COMPUTE = lib.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT
_TRANSFER = lib.VK_PIPELINE_STAGE_TRANSFER_BIT
_ALL_ACCESS = (lib.VK_ACCESS_SHADER_READ_BIT | lib.VK_ACCESS_SHADER_WRITE_BIT
               | lib.VK_ACCESS_TRANSFER_READ_BIT | lib.VK_ACCESS_TRANSFER_WRITE_BIT)


class Range(Protocol):
    """What a command needs of a buffer: a Buffer, or a BufferSlice of one."""

    handle: Any
    key: int
    offset: int
    nbytes: int
    size: int


@dataclasses.dataclass(eq=False)
class Dispatch:
    kernel: "Kernel"
    groups: tuple[int, int, int]
    buffers: list[Range]        # in binding order
    push: bytes
    label: str = ""             # the graph node it belongs to (profiles)

    stage = _COMPUTE

    def accesses(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        reads, writes = [], []
        for b, binding in zip(self.buffers, self.kernel.info.bindings):
            r = (b.key, b.offset, b.offset + b.size)
            access = binding["access"]
            if access != "writeonly":
                reads.append(r)
            if access != "readonly":
                writes.append(r)
        return reads, writes


@dataclasses.dataclass(eq=False)
class Copy:
    src: Range
    dst: Range
    nbytes: int
    src_offset: int = 0         # relative to the ranges' own offsets
    dst_offset: int = 0
    label: str = ""

    stage = _TRANSFER

    def accesses(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        s = self.src.offset + self.src_offset
        d = self.dst.offset + self.dst_offset
        return [(self.src.key, s, s + self.nbytes)], [(self.dst.key, d, d + self.nbytes)]


Command = Dispatch | Copy


def _overlaps(r: tuple[int, int, int], ranges: list[tuple[int, int, int]]) -> bool:
    key, lo, hi = r
    return any(k == key and lo < h and l < hi for k, l, h in ranges)


class HazardTracker:
    """The reads and writes since the last barrier, and whether a command must wait for them."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def conflicts(self, reads: list[tuple[int, int, int]], writes: list[tuple[int, int, int]]) -> bool:
        return (any(_overlaps(r, self.writes) for r in reads)
                or any(_overlaps(w, self.writes) or _overlaps(w, self.reads) for w in writes))

    def add(self, reads: list[tuple[int, int, int]], writes: list[tuple[int, int, int]]) -> None:
        self.reads.extend(reads)
        self.writes.extend(writes)

    def clear(self) -> None:
        self.reads.clear()
        self.writes.clear()


def plan_barriers(commands: Sequence[Command]) -> list[bool]:
    """For each command, whether a barrier must precede it (pure: testable without a GPU)."""
    tracker = HazardTracker()
    out = []
    for c in commands:
        reads, writes = c.accesses()
        need = tracker.conflicts(reads, writes)
        if need:
            tracker.clear()
        tracker.add(reads, writes)
        out.append(need)
    return out


def _write_access(stages: int) -> int:
    bits = 0
    if stages & _COMPUTE:
        bits |= lib.VK_ACCESS_SHADER_WRITE_BIT
    if stages & _TRANSFER:
        bits |= lib.VK_ACCESS_TRANSFER_WRITE_BIT
    return bits


_BARRIERS: dict[tuple[int, int], Any] = {}


def memory_barrier(cmd: Any, src_stages: int, src_access: int, dst_stages: int, dst_access: int,
                   keep: list[Any]) -> None:
    # The struct is only read during the call: one per access pair serves every recording.
    barrier = _BARRIERS.get((src_access, dst_access))
    if barrier is None:
        barrier = _BARRIERS[src_access, dst_access] = new(
            "VkMemoryBarrier", None, sType=lib.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            srcAccessMask=src_access, dstAccessMask=dst_access)
    lib.vkCmdPipelineBarrier(cmd, src_stages, dst_stages, 0, 1, barrier, 0, ffi.NULL, 0, ffi.NULL)


def allocate_descriptor_sets(device_handle: Any, pool: Any, dispatches: Sequence[Dispatch],
                             keep: list[Any]) -> list[Any]:
    """One descriptor set per dispatch from `pool`, written with the dispatch's ranges."""
    if not dispatches:
        return []
    n = len(dispatches)
    set_layouts = ffi.new("VkDescriptorSetLayout[]", [d.kernel.set_layout for d in dispatches])
    info = new("VkDescriptorSetAllocateInfo", keep,
               sType=lib.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
               descriptorPool=pool, descriptorSetCount=n, pSetLayouts=set_layouts)
    sets = ffi.new("VkDescriptorSet[]", n)
    keep.extend([set_layouts, sets])
    check(lib.vkAllocateDescriptorSets(device_handle, info, sets), "vkAllocateDescriptorSets")
    n_writes = sum(len(d.buffers) for d in dispatches)
    if n_writes:
        infos = ffi.new("VkDescriptorBufferInfo[]", n_writes)
        writes = ffi.new("VkWriteDescriptorSet[]", n_writes)
        keep.extend([infos, writes])
        w = 0
        storage = lib.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
        stype = lib.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
        for s, d in enumerate(dispatches):
            for binding, buf in enumerate(d.buffers):
                info_w = infos[w]
                info_w.buffer = buf.handle
                info_w.offset = buf.offset
                info_w.range = buf.size
                write = writes[w]
                write.sType = stype
                write.dstSet = sets[s]
                write.dstBinding = binding
                write.descriptorCount = 1
                write.descriptorType = storage
                write.pBufferInfo = infos + w
                w += 1
        lib.vkUpdateDescriptorSets(device_handle, n_writes, writes, 0, ffi.NULL)
    return [sets[i] for i in range(n)]


def create_descriptor_pool(device_handle: Any, n_sets: int, n_descriptors: int, keep: list[Any]) -> Any:
    size = new("VkDescriptorPoolSize", keep, type=lib.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
               descriptorCount=max(n_descriptors, 1))
    info = new("VkDescriptorPoolCreateInfo", keep,
               sType=lib.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
               maxSets=max(n_sets, 1), poolSizeCount=1, pPoolSizes=size)
    out = ffi.new("VkDescriptorPool*")
    check(lib.vkCreateDescriptorPool(device_handle, info, ffi.NULL, out), "vkCreateDescriptorPool")
    return out[0]


@dataclasses.dataclass
class Timestamps:
    """Where timestamps go: "each" (before and after every dispatch) or "span" (first to last)."""

    pool: Any
    mode: str


def record_commands(cmd: Any, commands: Sequence[Command], sets: Sequence[Any], keep: list[Any], *,
                    timestamps: Timestamps | None = None, barriers: Sequence[bool] | None = None,
                    host_read: bool = True) -> int:
    """Record `commands` into the begun command buffer `cmd`; returns the number of barriers.

    A first barrier orders them after everything submitted earlier on the queue (pipeline
    barriers reach back across submissions), so one-shot batches and replays may follow
    each other without the host waiting in between. `barriers` overrides the hazard plan
    (tests use it to prove a missing barrier is caught). `host_read` ends with a barrier that
    makes the writes visible to the host (downloads, host-visible outputs).
    """
    if barriers is None:  # one command needs none besides the leading barrier
        barriers = plan_barriers(commands) if len(commands) > 1 else [False] * len(commands)
    memory_barrier(cmd, _COMPUTE | _TRANSFER, _write_access(_COMPUTE | _TRANSFER),
                   _COMPUTE | _TRANSFER, _ALL_ACCESS, keep)
    count = 1
    each = timestamps is not None and timestamps.mode == "each"
    if timestamps is not None and not each:
        lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, timestamps.pool, 0)
    stages_since = 0
    write_stages_since = 0
    d_index = 0
    bind_point = lib.VK_PIPELINE_BIND_POINT_COMPUTE
    compute_bit = lib.VK_SHADER_STAGE_COMPUTE_BIT
    for op, need in zip(commands, barriers):
        if need:
            # The destination is every stage a later command may use, not just this one's: the
            # hazard plan forgets the writes before a barrier, so the barrier must make them
            # visible to a copy after a dispatch after it too (sync validation caught a graph
            # output copy reading what a dispatch wrote before a compute-only barrier).
            memory_barrier(cmd, stages_since or _COMPUTE, _write_access(write_stages_since or stages_since),
                           _COMPUTE | _TRANSFER, _ALL_ACCESS, keep)
            count += 1
            stages_since = write_stages_since = 0
        stages_since |= op.stage
        if isinstance(op, Copy):
            if op.nbytes:
                region = new("VkBufferCopy", keep, srcOffset=op.src.offset + op.src_offset,
                             dstOffset=op.dst.offset + op.dst_offset, size=op.nbytes)
                lib.vkCmdCopyBuffer(cmd, op.src.handle, op.dst.handle, 1, region)
                write_stages_since |= op.stage
            continue
        write_stages_since |= op.stage
        k = op.kernel
        lib.vkCmdBindPipeline(cmd, bind_point, k.pipeline)
        set_arr = ffi.new("VkDescriptorSet[]", [sets[d_index]])
        keep.append(set_arr)
        lib.vkCmdBindDescriptorSets(cmd, bind_point, k.layout, 0, 1, set_arr, 0, ffi.NULL)
        if op.push:
            blob = ffi.new("char[]", op.push)
            keep.append(blob)
            lib.vkCmdPushConstants(cmd, k.layout, compute_bit, 0, len(op.push), blob)
        if each:
            lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, timestamps.pool,
                                    2 * d_index)
        if all(op.groups):
            lib.vkCmdDispatch(cmd, *op.groups)
        if each:
            lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, timestamps.pool,
                                    2 * d_index + 1)
        d_index += 1
    if timestamps is not None and not each:
        lib.vkCmdWriteTimestamp(cmd, lib.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, timestamps.pool, 1)
    if host_read:
        memory_barrier(cmd, _COMPUTE | _TRANSFER, _write_access(_COMPUTE | _TRANSFER),
                       lib.VK_PIPELINE_STAGE_HOST_BIT, lib.VK_ACCESS_HOST_READ_BIT, keep)
    return count
