"""Running one op call: eagerly on a device, or as a node of the graph being captured.

Public ops (`vkq.linear`, `vkq.rms_norm`, ...) validate their arguments, then call `run_op`
with the op's registered name, its tensor inputs by role, its attributes, its weight and its
constant host arrays. Eager calls plan, record into one batch and submit it:

- with numpy inputs, the inputs are uploaded, the op runs and the outputs are downloaded in
  that one submission, which the call waits for;
- with DeviceTensor inputs, the outputs are new DeviceTensors and the call returns without
  waiting: its commands join the device's open batch (`Device.open_batch`), which is
  submitted every few dozen calls or before anything is read, so chained calls pipeline and
  share submissions, and the host waits only when a result is read (`DeviceTensor.numpy()`).

Inside `with vkq.graph() as g:` calls on graph values add nodes to `g` instead.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq.graph import Value, capturing
from vkq.ops import contract
from vkq.ops.contract import HostTensor, Plan, TensorSpec
from vkq.runtime import Buffer, Device, default_device
from vkq.runtime.buffer import BufferSlice
from vkq.tensor import DeviceTensor

#: Plans kept per weight (or per weightless op) for repeated eager calls.
PLAN_CACHE_SIZE = 16


def spec_of(t: Any) -> TensorSpec:
    if isinstance(t, (HostTensor, DeviceTensor, Value)):
        return t.spec
    raise TypeError(f"expected a tensor, got {type(t).__name__}")


def run_op(op_name: str, inputs: Mapping[str, Any], attrs: Mapping[str, Any] | None = None, *,
           weight: Any = None, constants: Mapping[str, np.ndarray] | None = None,
           device: Device | None = None) -> dict[str, Any]:
    """Run (or capture) one call of a registered op; returns its outputs by role: numpy
    arrays in stored form for numpy inputs, DeviceTensors for device inputs, graph values
    inside a capture."""
    op = contract.get(op_name)
    attrs = dict(attrs or {})
    constants = {k: v for k, v in (constants or {}).items() if v is not None}
    graph = capturing()
    values = [t for t in inputs.values() if isinstance(t, Value)]
    if graph is not None or values:
        target = values[0].graph if values else graph
        return target.add_node(op, dict(inputs), attrs, weight, constants, device)
    device = _device_of(inputs, weight, device)
    pw = op.prepack(weight, device) if weight is not None else None
    plan = _cached_plan(op, {role: spec_of(t) for role, t in inputs.items()}, attrs, pw, device)
    for role in plan.writes:
        if not isinstance(inputs[role], DeviceTensor):
            raise TypeError(f"{op.name} updates {role!r} in place: pass a vkq.DeviceTensor "
                            f"(vkq.to_device), not a host array")
    download = not any(isinstance(t, DeviceTensor) for t in inputs.values())
    return _run_eager(op, plan, inputs, pw, constants, device, download)


def _cached_plan(op: contract.Op, specs: dict[str, TensorSpec], attrs: dict[str, Any], pw: Any,
                 device: Device) -> Plan:
    """op.plan, remembered on the prepacked weight (or the op) for the same op, specs and
    attributes: an eager call in a decode loop plans once. Plans are pure functions of
    these, the weight and the device's capabilities (ops may share a prepacked weight:
    q4gsw_linear and qta8a_qga4w_linear do)."""
    owner = pw if pw is not None else op
    cache = owner.__dict__.setdefault("_plan_cache", {})
    try:
        key = (op.name, tuple(sorted(specs.items())), tuple(sorted(attrs.items())), id(device))
        hit = cache.get(key)
    except TypeError:  # an unhashable attribute: plan every time
        return op.plan(specs, attrs, pw, device)
    if hit is not None and hit[0] is device:
        return hit[1]
    plan = op.plan(specs, attrs, pw, device)
    if len(cache) >= PLAN_CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = (device, plan)
    return plan


def _device_of(inputs: Mapping[str, Any], weight: Any, device: Device | None) -> Device:
    found = [t.device for t in inputs.values() if isinstance(t, DeviceTensor)]
    wdev = getattr(weight, "device", None)
    if wdev is not None:
        found.append(wdev)
    if device is None:
        device = found[0] if found else default_device()
    for d in found:
        if d is not device:
            raise ValueError("inputs and weights live on different devices (or not on the device "
                             "asked for); move them to one device first")
    return device


def weight_buffers(pw: Any) -> dict[str, Any]:
    """role -> buffer of a prepacked weight (its `buffers()`), prefixed "weight."."""
    if pw is None:
        return {}
    if getattr(pw, "closed", False):
        raise ValueError("the weight's device copy has been released (w.release() / close())")
    return {f"weight.{k}": b for k, b in pw.buffers().items()}


def output_buffers(device: Device, plan: Plan) -> dict[str, Any]:
    """New buffers for a plan's outputs; parts of a fused output are slices of their base."""
    out: dict[str, Any] = {}
    for role, spec in plan.outputs.items():
        if role not in plan.views:
            out[role] = Buffer(device, spec.nbytes)
    for role, (base, offset) in plan.views.items():
        out[role] = BufferSlice(out[base], offset, plan.outputs[role].nbytes)
    return out


def _run_eager(op: contract.Op, plan: Plan, inputs: Mapping[str, Any], pw: Any,
               constants: Mapping[str, np.ndarray], device: Device, download: bool) -> dict[str, Any]:
    buffers: dict[str, Any] = {"dummy": device.dummy_buffer()}
    buffers.update(weight_buffers(pw))
    outs = output_buffers(device, plan)
    buffers.update(outs)
    batch = device.batch(wait=download)
    try:
        # host inputs and constants: uploaded in this batch into buffers freed after it ran
        uploads = {r: t.data for r, t in inputs.items() if not isinstance(t, DeviceTensor)}
        uploads.update(constants)
        for role, t in inputs.items():
            if isinstance(t, DeviceTensor):
                buffers[role] = t.buffer
        for role, arr in uploads.items():
            buf = Buffer(device, arr.nbytes)
            batch.upload(buf, arr)
            batch.keep(buf)
            buffers[role] = buf
        for role, nbytes in plan.scratch.items():
            buf = Buffer(device, nbytes)
            batch.keep(buf)
            buffers[role] = buf
        op.record(batch, buffers, plan)
        downloads = {role: batch.download(outs[role], plan.outputs[role].nbytes)
                     for role in plan.outputs} if download else {}
    except BaseException:
        batch._release()
        for b in outs.values():
            if isinstance(b, Buffer):
                b.close()
        raise
    if not download:  # DeviceTensors in and out: joins the device's open batch (no submit yet)
        device.open_batch().absorb(batch)
        device._flush_if_full()
        return {role: DeviceTensor.from_spec(device, spec, outs[role])
                for role, spec in plan.outputs.items()}
    batch.submit()
    result = {}
    for role, d in downloads.items():
        spec = plan.outputs[role]
        result[role] = d.result().view(spec.stored_dtype).reshape(spec.stored_shape)
    for b in outs.values():
        if isinstance(b, Buffer):
            b.close()
    return result
