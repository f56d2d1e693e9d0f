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

    b = device.batch(wait=False) ... b.submit()   # returns at once; the GPU runs it later

Barriers go only where commands touch the same bytes (vkq.runtime.commands). The command
buffer, fence and descriptor pool come from the device's reusable submissions; staging
buffers from its memory pool.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from vkq.runtime.buffer import Buffer
from vkq.runtime.commands import Command, Copy, Dispatch, Range, Timestamps, record_commands
from vkq.runtime.kernel import Kernel
from vkq.runtime.trace import note_dispatch

if TYPE_CHECKING:
    from vkq.runtime.device import Device


class Download:
    """Bytes that a batch copies out of a buffer (through host-visible staging); readable
    once the batch has completed."""

    def __init__(self, staging: Buffer, nbytes: int):
        self._staging, self.nbytes = staging, nbytes
        self._data: np.ndarray | None = None

    def _collect(self) -> None:
        self._data = self._staging.view()[: self.nbytes].copy()

    def result(self) -> np.ndarray:
        if self._data is None:
            raise RuntimeError("the batch holding this download has not completed yet")
        return self._data


class CommandBatch:
    """Collects commands, then records, submits and (by default) waits for them in `submit()`."""

    def __init__(self, device: "Device", timestamps: bool | str = False, wait: bool = True):
        if timestamps not in (False, True, "span"):
            raise ValueError(f"timestamps must be False, True (per dispatch) or 'span', got {timestamps!r}")
        if timestamps and not device.caps.timestamps:
            raise RuntimeError(f"{device.caps.name} has no compute-queue timestamps")
        if timestamps and not wait:
            raise ValueError("timestamps are read after the batch completes: use wait=True")
        self.device = device
        self.timestamps = timestamps
        self.wait = wait
        self.span_ns: float | None = None
        self.commands: list[Command] = []
        self._staging: list[Buffer] = []
        self._downloads: list[Download] = []
        self._keepalive: list[Any] = []
        self.timestamps_ns: list[tuple[float, float]] = []
        self.kernel_names: list[str] = []
        self.serial: int | None = None
        self._submitted = False

    # -- collecting ------------------------------------------------------------------------
    def upload(self, dst: Range, array: np.ndarray, offset: int = 0) -> None:
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if offset + data.size > dst.nbytes:
            raise ValueError(f"upload of {data.size} bytes at {offset} overruns a {dst.nbytes}-byte buffer")
        staging = self._staging_buffer(data.size)
        staging.view()[: data.size] = data
        self.commands.append(Copy(staging, dst, data.size, 0, offset))

    def download(self, src: Range, nbytes: int | None = None) -> Download:
        nbytes = src.nbytes if nbytes is None else nbytes
        staging = self._staging_buffer(nbytes)
        self.commands.append(Copy(src, staging, nbytes))
        d = Download(staging, nbytes)
        self._downloads.append(d)
        return d

    def copy(self, src: Range, dst: Range, nbytes: int | None = None) -> None:
        nbytes = min(src.nbytes, dst.nbytes) if nbytes is None else nbytes
        self.commands.append(Copy(src, dst, nbytes))

    def absorb(self, other: "CommandBatch") -> None:
        """Take over the commands (and what they need kept alive) of an unsubmitted batch
        recorded completely, e.g. one eager call joining the device's open batch."""
        if other._submitted or other._downloads:
            raise RuntimeError("only an unsubmitted batch without downloads can be absorbed")
        self.commands.extend(other.commands)
        self._staging.extend(other._staging)
        self._keepalive.extend(other._keepalive)
        self.kernel_names.extend(other.kernel_names)
        other.commands, other._staging, other._keepalive, other.kernel_names = [], [], [], []
        other._submitted = True

    def keep(self, obj: Any) -> None:
        """Hold `obj` (e.g. a temporary Buffer) until the batch's work is done."""
        self._keepalive.append(obj)

    def dispatch(self, kernel: Kernel, groups: tuple[int, ...], *,
                 buffers: Mapping[str, Range], push: Mapping[str, Any] | None = None,
                 label: str = "") -> None:
        self.commands.append(make_dispatch(self.device, kernel, groups, buffers, push, label))
        self.kernel_names.append(kernel.name)
        note_dispatch(kernel.name)

    def add_dispatch(self, kernel: Kernel, groups: tuple[int, int, int], bound: list[Range],
                     push: bytes, label: str = "") -> None:
        """`dispatch` for callers that checked the interface already (op plans): buffers in
        binding order, push constants packed."""
        for b in bound:
            if b.closed:
                raise ValueError(f"{kernel.name}: a buffer it binds is closed")
        self.commands.append(Dispatch(kernel, groups, bound, push, label))
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
        """Record everything into one command buffer and submit it; wait unless wait=False."""
        if self._submitted:
            raise RuntimeError("a CommandBatch can be submitted once")
        self._submitted = True
        try:
            if any(isinstance(op, Dispatch) or op.nbytes for op in self.commands):
                self._run()
            for d in self._downloads:
                d._collect()
        finally:
            self._release()

    def _release(self) -> None:
        for buf in self._staging:
            buf.close()  # reused only once this batch's work is done (Device.retire)
        self._staging.clear()
        for obj in self._keepalive:
            if isinstance(obj, Buffer):
                obj.close()
        self._keepalive.clear()

    def _run(self) -> None:
        dev = self.device
        dispatches = [op for op in self.commands if isinstance(op, Dispatch)]
        sub = dev._acquire_submission(len(dispatches), sum(len(d.buffers) for d in dispatches))
        try:
            n_pairs = 1 if self.timestamps == "span" else len(dispatches)
            stamps = None
            if self.timestamps and dispatches:
                stamps = Timestamps(sub.query_pool(2 * n_pairs), "each" if self.timestamps is True else "span")
            sub.begin()
            sets = sub.descriptor_sets(dispatches)
            if stamps is not None:
                from vkq.runtime.vk import lib
                lib.vkCmdResetQueryPool(sub.cmd, stamps.pool, 0, 2 * n_pairs)
            record_commands(sub.cmd, self.commands, sets, sub.keep, timestamps=stamps)
            sub.end()
        except BaseException:
            dev._recycle(sub)
            raise
        self.serial = dev._submit(sub)
        if not self.wait:
            return
        dev.wait(self.serial)
        if stamps is not None:
            times = dev._read_timestamps(stamps.pool, n_pairs)
            if self.timestamps == "span":
                self.span_ns = times[0][1] - times[0][0]
            else:
                self.timestamps_ns = times

    def __enter__(self) -> "CommandBatch":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.submit()
        else:
            self._release()


def make_dispatch(device: "Device", kernel: Kernel, groups: tuple[int, ...],
                  buffers: Mapping[str, Range], push: Mapping[str, Any] | None,
                  label: str = "") -> Dispatch:
    """A checked Dispatch: buffers match the kernel's bindings by name, none is closed, the
    workgroup count is within the device's limits, push constants match their declaration."""
    names = kernel.binding_names
    if len(buffers) != len(names) or any(n not in buffers for n in names):
        raise ValueError(f"{kernel.name}: buffers {sorted(buffers)} do not match the declared "
                         f"bindings {list(names)}")
    bound = [buffers[n] for n in names]
    for n, b in zip(names, bound):
        if b.closed:
            raise ValueError(f"{kernel.name}: buffer {n!r} is closed")
    groups = tuple(int(g) for g in groups) + (1,) * (3 - len(groups))
    limit = device.caps.max_workgroup_count
    if any(g < 0 or g > lim for g, lim in zip(groups, limit)):
        raise ValueError(f"{kernel.name}: workgroup count {groups} outside the device limit {limit}")
    return Dispatch(kernel, groups, bound, kernel.pack_push_constants(push or {}), label)
