"""Graphs: record a model's layers once, replay them with one submit.

    with vkq.graph() as g:                       # ops record instead of running
        x = g.input("x", (1, 4096), np.float32)
        h = vkq.rms_norm(x, norm_weight, eps=1e-5)
        y = vkq.linear(h, w4)
        g.output("y", y)
    out = g(x=x_np)                              # one submit, one wait: {"y": array}

Capture goes through the public ops: on graph values they add a node (op, inputs, attributes,
prepacked weight, constants and the op's plan, made once) and return graph values. When the
with-block ends the graph's passes rewrite its nodes (vkq.passes: by default quantize ->
dequantize -> int4 linear chains become one fused linear; `g.nodes` lists the result,
`g.pass_log` the rewrites), and the graph is built once:

- intermediate tensors and scratch share one arena, placed by liveness (two tensors share
  bytes only if no node sees both alive);
- inputs and outputs get buffers of their own, with host-visible staging;
- every node is recorded through its op's `record` into one `Program` (vkq.runtime):
  descriptor sets written and barriers placed once, a barrier only where a dispatch touches
  bytes an earlier one wrote (or writes bytes it read).

A replay copies the inputs into staging, submits once, waits once and reads the outputs.
`g(..., download=False)` returns the outputs as DeviceTensors over the graph's own output
buffers instead (valid until the next replay) and does not wait.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Iterable, Mapping

import numpy as np

from vkq import layouts
from vkq import passes as passes_module
from vkq.ops import contract
from vkq.ops.contract import DENSE, Plan, TensorSpec
from vkq.runtime import Buffer, Device, default_device
from vkq.runtime.buffer import BufferSlice
from vkq.runtime.commands import Command, Copy, Dispatch
from vkq.runtime.memory import RANGE_ALIGN
from vkq.runtime.program import Program
from vkq.tensor import DeviceTensor

_state = threading.local()


def capturing() -> "Graph | None":
    """The graph being captured on this thread, if any."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


class GraphError(RuntimeError):
    """A graph was captured, built or replayed wrongly (the message says how)."""


class Value:
    """A tensor inside a graph: shape, dtype and layout, no data."""

    def __init__(self, graph: "Graph", spec: TensorSpec, name: str, producer: int | None):
        self.graph = graph
        self.spec = spec
        self.name = name
        self.producer = producer   # node index; None for graph inputs

    shape = property(lambda self: self.spec.shape)
    dtype = property(lambda self: self.spec.dtype)
    format = property(lambda self: self.spec.layout)
    device = property(lambda self: self.graph.device)

    def numpy(self) -> np.ndarray:
        raise GraphError(f"{self.name} is a graph value: it has no data until the graph runs. "
                         f"Mark it with g.output(name, value) and read it from g(...)")

    def __repr__(self) -> str:
        return f"<vkq graph value {self.name}: {self.spec.describe()}>"


class Param:
    """A uint32 scalar that each replay sets (`g(..., name=value)`): a token id, a decode
    position. It lives in the graph's parameter buffer, which shaders read, so replays with
    new values run the same recorded commands. Ops that index with it bound its range."""

    def __init__(self, graph: "Graph", name: str, slot: int):
        self.graph, self.name, self.slot = graph, name, slot
        self.upper: int | None = None  # values must be < upper (set by the ops using it)

    def bound(self, upper: int) -> None:
        self.upper = upper if self.upper is None else min(self.upper, upper)

    def __repr__(self) -> str:
        return f"<vkq graph param {self.name} (slot {self.slot})>"


class Node:
    """One op call of a graph: `op`, its `inputs` and `outputs` by role (graph values), `attrs`,
    prepacked `weight`, `constants` and `plan`. Passes read these (vkq.passes) and change the
    graph only through `Graph.replace`."""

    def __init__(self, index: int, op: contract.Op, inputs: dict[str, Value], attrs: dict[str, Any],
                 weight: Any, constants: dict[str, np.ndarray], plan: Plan):
        self.index, self.op, self.inputs, self.attrs = index, op, inputs, attrs
        self.weight, self.constants, self.plan = weight, constants, plan
        self.outputs: dict[str, Value] = {}
        self.label = f"{index}:{op.name}"

    def __repr__(self) -> str:
        """One line: `label(input role=value, ...) -> output values`."""
        ins = ", ".join(f"{r}={v.name}" for r, v in self.inputs.items())
        return f"{self.label}({ins}) -> {', '.join(v.name for v in self.outputs.values())}"


def plan_arena(intervals: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """Offsets for tensors given as (first node, last node, bytes): two tensors whose node
    intervals intersect never overlap in bytes. Largest first, each at the lowest offset that
    fits between the already placed ones it lives alongside. Returns (offsets, arena size)."""
    order = sorted(range(len(intervals)), key=lambda i: -intervals[i][2])
    offsets = [0] * len(intervals)
    placed: list[int] = []
    total = 0
    for i in order:
        lo, hi, size = intervals[i]
        size = -(-size // RANGE_ALIGN) * RANGE_ALIGN
        busy = sorted((offsets[j], offsets[j] + -(-intervals[j][2] // RANGE_ALIGN) * RANGE_ALIGN)
                      for j in placed if intervals[j][0] <= hi and lo <= intervals[j][1])
        at = 0
        for start, end in busy:
            if at + size <= start:
                break
            at = max(at, end)
        offsets[i] = at
        placed.append(i)
        total = max(total, at + size)
    return offsets, total


class Graph:
    """A captured sequence of op calls, built into one replayable program (module docstring)."""

    def __init__(self, device: Device | None = None, passes: Any = None):
        self.device = device or default_device()
        #: rewrites of the captured nodes run when the graph is built (vkq.passes); None: the
        #: default ones, () none
        self.passes = tuple(passes_module.DEFAULT_PASSES if passes is None else passes)
        #: what each pass changed, one line per rewrite
        self.pass_log: list[str] = []
        self._nodes: list[Node] = []
        self._inputs: dict[str, Value] = {}
        self._outputs: dict[str, Value] = {}
        self._built = False
        self._closed = False
        self._owned: list[Any] = []          # buffers the graph allocated
        self._program: Program | None = None
        self._profile_program: Program | None = None
        self._weights: list[Any] = []
        self._params: dict[str, Param] = {}
        self._external: dict[int, tuple[Value, DeviceTensor]] = {}  # id(Value) -> captured tensor
        self._checked_closes = -1

    # -- capture ------------------------------------------------------------------------------
    def __enter__(self) -> "Graph":
        if self._built:
            raise GraphError("this graph is already built; capture a new one")
        stack = getattr(_state, "stack", None)
        if stack is None:
            stack = _state.stack = []
        stack.append(self)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        _state.stack.remove(self)
        if exc_type is None:
            self.build()

    def input(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32,
              layout: str = DENSE) -> Value:
        """A graph input: replays take an array of this shape and dtype under `name`. Packed
        int8 layouts ("int8_4w", "int8_4h4w") are packed by the replay from int8 arrays."""
        self._check_capturing()
        if name in self._inputs:
            raise GraphError(f"input {name!r} is declared twice")
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape) or not shape:
            raise GraphError(f"input {name!r}: shape must have >= 1 non-negative dims, got {shape}")
        spec = _input_spec(shape, np.dtype(dtype), layout)
        v = Value(self, spec, name, None)
        self._inputs[name] = v
        return v

    def param(self, name: str) -> Param:
        """A uint32 scalar input: replays take `name=value` (e.g. the token id or position)."""
        self._check_capturing()
        if name in self._inputs or name in self._params:
            raise GraphError(f"input {name!r} is declared twice")
        p = self._params[name] = Param(self, name, len(self._params))
        return p

    def output(self, name: str, value: Value) -> None:
        """Return `value` from replays under `name`."""
        self._check_capturing()
        if not isinstance(value, Value) or value.graph is not self:
            raise GraphError(f"output {name!r} must be a value of this graph, got {value!r}")
        if name in self._outputs:
            raise GraphError(f"output {name!r} is declared twice")
        self._outputs[name] = value

    def _check_capturing(self) -> None:
        if self._built:
            raise GraphError("this graph is already built: inputs, outputs and ops are added "
                             "inside its with-block")

    def add_node(self, op: contract.Op, inputs: dict[str, Any], attrs: dict[str, Any], weight: Any,
                 constants: dict[str, np.ndarray], device: Device | None) -> dict[str, Value]:
        """Called by vkq.execute for an op call inside the capture."""
        if self._built:
            raise GraphError(f"{op.name}: this graph is already built; values of a built graph "
                             f"cannot be used in new calls")
        if capturing() is not self:
            raise GraphError(f"{op.name}: graph values are used outside their graph's with-block")
        if device is not None and device is not self.device:
            raise GraphError(f"{op.name}: device={device!r} differs from the graph's device")
        for role, t in list(inputs.items()):
            if isinstance(t, DeviceTensor):  # captured by reference: read at every replay
                inputs[role] = self._capture_tensor(op.name, role, t)
                continue
            if not isinstance(t, Value):
                raise GraphError(f"{op.name}: input {role!r} is a host array; inside a graph "
                                 f"capture, activations are graph values (declare them with "
                                 f"g.input) or DeviceTensors")
            if t.graph is not self:
                raise GraphError(f"{op.name}: input {role!r} is a value of another graph")
        for name, a in attrs.items():
            if isinstance(a, Param) and a.graph is not self:
                raise GraphError(f"{op.name}: attribute {name!r} is a parameter of another graph")
        node = self._plan_node(op, inputs, attrs, weight, constants)
        self._nodes.append(node)
        return dict(node.outputs)

    def _plan_node(self, op: contract.Op, inputs: dict[str, Value], attrs: dict[str, Any],
                   weight: Any, constants: dict[str, np.ndarray]) -> Node:
        """Prepack and plan one call on this graph's values: a node numbered as the next one."""
        wdev = getattr(weight, "device", None)
        if wdev is not None and wdev is not self.device:
            raise GraphError(f"{op.name}: the weight lives on another device than the graph")
        pw = op.prepack(weight, self.device) if weight is not None else None
        plan = op.plan({r: v.spec for r, v in inputs.items()}, attrs, pw, self.device)
        for role in plan.writes:
            if id(inputs[role]) not in self._external:
                raise GraphError(f"{op.name} updates {role!r} in place: inside a graph that must "
                                 f"be a DeviceTensor (captured by reference), not a graph value")
        node = Node(len(self._nodes), op, inputs, attrs, pw, dict(constants), plan)
        for role, spec in plan.outputs.items():
            node.outputs[role] = Value(self, spec, f"%{node.index}.{role}", node.index)
        if pw is not None:
            self._weights.append(pw)
        return node

    def _capture_tensor(self, op: str, role: str, t: DeviceTensor) -> Value:
        if t.device is not self.device:
            raise GraphError(f"{op}: input {role!r} lives on another device than the graph")
        if t.closed:
            raise GraphError(f"{op}: input {role!r} is a closed DeviceTensor")
        for v, held in self._external.values():
            if held is t:
                return v
        v = Value(self, t.spec, f"<device tensor {role}>", None)
        self._external[id(v)] = (v, t)
        return v

    # -- what passes see and do ---------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes in execution order (once built: after the passes); each prints as one line."""
        return list(self._nodes)

    def producer(self, value: Value) -> Node | None:
        """The node whose output `value` is (None for inputs and captured tensors)."""
        return next((n for n in self._nodes if any(v is value for v in n.outputs.values())), None)

    def users(self, value: Value) -> list[tuple[Node, str]]:
        """(node, input role) of every use of `value` by a node."""
        return [(n, r) for n in self._nodes for r, v in n.inputs.items() if v is value]

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self._outputs.values())

    def replace(self, old: list[Node], op: contract.Op, call: contract.Call,
                keep: dict[str, Value]) -> Node:
        """Replace the nodes `old` by one node running `call` of `op`, where the last of them
        was. The new node's outputs named in `keep` take over those values (same specs), so
        later nodes and graph outputs read them unchanged; every other output of `old` must
        be unused outside `old`. Returns the new node, labelled with the last one's number
        until the build numbers the nodes again (so `pass_log` lines speak of the nodes as
        captured)."""
        if self._built:
            raise GraphError("this graph is already built; passes run before it is")
        gone = {id(n) for n in old}
        kept = {id(v) for v in keep.values()}
        for n in old:
            for v in n.outputs.values():
                if id(v) not in kept and (self.is_output(v) or any(
                        id(u) not in gone for u, _ in self.users(v))):
                    raise GraphError(f"{n.label}: its output {v.name} is still used")
        constants = {k: v for k, v in call.constants.items() if v is not None}  # as run_op
        node = self._plan_node(op, dict(call.inputs), dict(call.attrs), call.weight, constants)
        for role, v in keep.items():
            if node.plan.outputs.get(role) != v.spec:
                raise GraphError(f"{op.name}: output {role!r} would be "
                                 f"{node.plan.outputs.get(role)}, not {v.spec.describe()}")
            node.outputs[role] = v
        last = max(old, key=self._nodes.index)
        node.index, node.label = last.index, f"{last.index}:{op.name}"  # until build renumbers
        at = self._nodes.index(last)
        self._nodes = ([n for n in self._nodes[:at] if id(n) not in gone] + [node]
                       + self._nodes[at + 1:])
        return node

    def _renumber(self) -> None:
        """Number the nodes (labels, value names) by their order, after the passes."""
        for i, n in enumerate(self._nodes):
            n.index, n.label = i, f"{i}:{n.op.name}"
            for role, v in n.outputs.items():
                v.producer, v.name = i, f"%{i}.{role}"

    # -- build --------------------------------------------------------------------------------
    def build(self) -> None:
        """Plan the arena, allocate, record the program (once; the with-block calls it)."""
        if self._built:
            return
        if not self._outputs:
            raise GraphError("the graph has no outputs: mark results with g.output(name, value)")
        try:
            for rewrite in self.passes:
                rewrite(self)
            self._renumber()
            self._build()
        except BaseException:
            self._release()
            raise
        self._built = True

    def _build(self) -> None:
        dev = self.device
        self._dummy = dev.dummy_buffer()
        self._params_buffer = self._own(Buffer(dev, 4 * max(1, len(self._params)), host_visible=True))
        self._params_view = self._params_buffer.view(np.uint32)
        ranges = self._place_values()
        ranges.update({vid: t.buffer for vid, (_, t) in self._external.items()})
        commands: list[Command] = []
        self._in_staging: dict[str, Buffer] = {}
        for name, v in self._inputs.items():
            staging = self._own(Buffer(dev, v.spec.nbytes, host_visible=True))
            self._in_staging[name] = staging
            commands.append(Copy(staging, ranges[id(v)], v.spec.nbytes))
        stream = _Recorder(dev, commands)
        for node in self._nodes:
            stream.label = node.label
            node.op.record(stream, self._node_buffers(node, ranges), node.plan)
        self._out_staging: dict[str, Buffer] = {}
        for name, v in self._outputs.items():
            staging = self._own(Buffer(dev, v.spec.nbytes, host_visible=True))
            self._out_staging[name] = staging
            commands.append(Copy(ranges[id(v)], staging, v.spec.nbytes))
        self._out_ranges = {name: ranges[id(v)] for name, v in self._outputs.items()}
        # zero-copy views of the staging buffers, made once (valid while the graph is open)
        self._in_views = {n: b.view() for n, b in self._in_staging.items()}
        self._out_views = {n: self._out_staging[n].view(v.spec.stored_dtype)
                           for n, v in self._outputs.items()}
        self._program = Program(dev, commands, timestamps="span")
        self._commands = commands

    def _own(self, buf: Buffer) -> Buffer:
        self._owned.append(buf)
        return buf

    def _place_values(self) -> dict[Any, Any]:
        """Buffer range of every value: inputs and outputs own a buffer, intermediates and
        scratch share the arena by liveness. Keys are id(Value), or _scratch_key for scratch."""
        end = len(self._nodes)
        last_use: dict[int, int] = {}
        for node in self._nodes:
            for v in node.inputs.values():
                last_use[id(v)] = node.index
        dedicated = {id(v) for v in self._inputs.values()} | {id(v) for v in self._outputs.values()}
        for v in self._outputs.values():
            last_use[id(v)] = end
        # parts of a fused output live in their base: its life spans every part's
        base_of: dict[int, tuple[Value, int]] = {}
        for node in self._nodes:
            for role, (base_role, offset) in node.plan.views.items():
                base = node.outputs[base_role]
                part = node.outputs[role]
                base_of[id(part)] = (base, offset)
                last_use[id(base)] = max(last_use.get(id(base), node.index), last_use.get(id(part), node.index))
                if id(part) in dedicated:
                    dedicated.add(id(base))
        items: list[tuple[Any, tuple[int, int, int]]] = []
        for node in self._nodes:
            for role, v in node.outputs.items():
                if id(v) in base_of or id(v) in dedicated or id(v) in self._external:
                    continue
                items.append((id(v), (node.index, last_use.get(id(v), node.index), v.spec.nbytes)))
            for role, nbytes in node.plan.scratch.items():
                items.append((_scratch_key(node, role), (node.index, node.index, nbytes)))
        offsets, total = plan_arena([iv for _, iv in items])
        self.arena_bytes = total
        self._intervals = [(iv, off) for (_, iv), off in zip(items, offsets)]
        ranges: dict[Any, Any] = {}
        arena = self._own(Buffer(self.device, total)) if total else None
        for (key, (_, _, nbytes)), off in zip(items, offsets):
            ranges[key] = BufferSlice(arena, off, nbytes)
        for v in list(self._inputs.values()) + [self._outputs[n] for n in self._outputs]:
            if id(v) not in ranges and id(v) not in base_of:
                ranges[id(v)] = self._own(Buffer(self.device, v.spec.nbytes))
        for node in self._nodes:
            for role, v in node.outputs.items():
                if id(v) in dedicated and id(v) not in ranges and id(v) not in base_of:
                    ranges[id(v)] = self._own(Buffer(self.device, v.spec.nbytes))
        for part_id, (base, offset) in base_of.items():
            part = next(v for n in self._nodes for v in n.outputs.values() if id(v) == part_id)
            ranges[part_id] = BufferSlice(_as_buffer(ranges[id(base)]), _rel(ranges[id(base)]) + offset,
                                          part.spec.nbytes)
        return ranges

    def _node_buffers(self, node: Node, ranges: dict[Any, Any]) -> dict[str, Any]:
        bufs: dict[str, Any] = {"dummy": self._dummy, "params": self._params_buffer}
        for role, v in node.inputs.items():
            bufs[role] = ranges[id(v)]
        for role, v in node.outputs.items():
            bufs[role] = ranges[id(v)]
        for role in node.plan.scratch:
            bufs[role] = ranges[_scratch_key(node, role)]
        for role, arr in node.constants.items():
            bufs[role] = self._own(self.device.upload(arr))
        if node.weight is not None:
            bufs.update({f"weight.{k}": b for k, b in node.weight.buffers().items()})
        return bufs

    # -- replay -------------------------------------------------------------------------------
    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        return {n: v.spec for n, v in self._inputs.items()}

    @property
    def output_specs(self) -> dict[str, TensorSpec]:
        return {n: v.spec for n, v in self._outputs.items()}

    @property
    def n_dispatches(self) -> int:
        return len(self._program.kernel_names) if self._program else 0

    @property
    def n_barriers(self) -> int:
        return self._program.n_barriers if self._program else 0

    @property
    def kernel_names(self) -> list[str]:
        return list(self._program.kernel_names) if self._program else []

    def __call__(self, download: bool = True, outputs: Iterable[str] | None = None,
                 **inputs: Any) -> dict[str, Any]:
        """Replay with new inputs (name -> array or DeviceTensor); returns name -> numpy array,
        or name -> DeviceTensor over the graph's output buffers with download=False.
        `outputs` names the outputs returned (default: all): a decode loop that only needs the
        next token skips copying the logits to numpy."""
        names = self._output_names(outputs)
        program = self._ready()
        self.device.wait(program.serial)  # staging is rewritten below
        pre = self._write_inputs(inputs)
        if pre is not None:
            pre.submit()
        program.submit()
        specs = {n: self._outputs[n].spec for n in names}
        if not download:
            return {n: DeviceTensor.from_spec(self.device, spec, self._out_ranges[n] if
                                              isinstance(self._out_ranges[n], BufferSlice)
                                              else BufferSlice(self._out_ranges[n], 0, spec.nbytes))
                    for n, spec in specs.items()}
        self.device.wait(program.serial)
        return {n: _from_storage(spec, self._out_views[n]) for n, spec in specs.items()}

    def _output_names(self, outputs: Iterable[str] | None) -> list[str]:
        if outputs is None:
            return list(self._outputs)
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        unknown = sorted(set(names) - set(self._outputs))
        if unknown:
            raise GraphError(f"unknown outputs {unknown}: the graph's outputs are {sorted(self._outputs)}")
        return names

    def gpu_ns(self) -> float:
        """GPU time of the last replay (timestamps around the whole program)."""
        return self._ready().span_ns()

    def profile(self, **inputs: Any) -> list[dict[str, Any]]:
        """Replay once with a timestamp around every dispatch: [{"node", "kernel", "us"}] in
        dispatch order (nodes with several dispatches appear once per dispatch)."""
        program = self._ready()
        if self._profile_program is None:
            self._profile_program = Program(self.device, self._commands, timestamps="each",
                                            barriers=program.barriers)
        self.device.wait(program.serial)
        pre = self._write_inputs(inputs)
        if pre is not None:
            pre.submit()
        self._profile_program.run()
        ns = self._profile_program.dispatch_ns()
        return [{"node": lab, "kernel": k, "us": t / 1e3}
                for lab, k, t in zip(self._profile_program.labels, self._profile_program.kernel_names, ns)]

    def _ready(self) -> Program:
        if self._closed:
            raise GraphError("this graph has been closed")
        if not self._built or self._program is None:
            raise GraphError("this graph is not built yet: replay it after its with-block")
        if self.device.handle is None:
            raise GraphError("the graph's device has been closed")
        closes = self.device.buffer_closes
        if closes != self._checked_closes:  # only re-check after some buffer was closed
            for w in self._weights:
                if getattr(w, "closed", False):
                    raise GraphError("a weight used by this graph was released after capture "
                                     "(w.release() / close()); capture the graph again")
            for _, t in self._external.values():
                if t.closed:
                    raise GraphError("a DeviceTensor captured by this graph has been closed; "
                                     "capture the graph again")
            self._checked_closes = closes
        return self._program

    def _write_inputs(self, inputs: Mapping[str, Any]) -> Any:
        """Copy host inputs into staging; DeviceTensor inputs get a device copy batch (returned,
        submitted before the program)."""
        names, expected = set(inputs), set(self._inputs) | set(self._params)
        if names != expected:
            missing, extra = sorted(expected - names), sorted(names - expected)
            raise GraphError(f"graph inputs are {sorted(expected)}; missing {missing}, unknown {extra}")
        batch = None
        for name, value in inputs.items():
            if name in self._params:
                self._params_view[self._params[name].slot] = _param_value(self._params[name], value)
                continue
            spec = self._inputs[name].spec
            staging = self._in_staging[name]
            if isinstance(value, DeviceTensor):
                if value.device is not self.device:
                    raise GraphError(f"input {name!r} lives on another device than the graph")
                if value.spec != spec:
                    raise GraphError(f"input {name!r} must be {spec.describe()}, got "
                                     f"{value.spec.describe()}")
                batch = batch or self.device.batch(wait=False)
                batch.copy(value.buffer, staging, spec.nbytes)
                continue
            self._in_views[name][: spec.nbytes] = _to_storage(name, spec, value).view(np.uint8).reshape(-1)
        return batch

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the graph's buffers and programs (after its last replay has finished)."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        for p in (self._program, self._profile_program):
            if p is not None:
                p.close()
        self._program = self._profile_program = None
        for b in self._owned:
            b.close()
        self._owned.clear()
        self._weights.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "built" if self._built else "capturing"
        return (f"<vkq Graph {state}: {len(self._nodes)} nodes, {self.n_dispatches} dispatches, "
                f"inputs {list(self._inputs)}, outputs {list(self._outputs)}>")


class _Recorder:
    """The stream a graph hands to op.record: collects checked dispatches into the command list."""

    def __init__(self, device: Device, commands: list[Command]):
        self.device = device
        self.commands = commands
        self.label = ""

    def add_dispatch(self, kernel: Any, groups: tuple[int, int, int], bound: list[Any],
                     push: bytes, label: str = "") -> None:
        self.commands.append(Dispatch(kernel, groups, bound, push, self.label))


def _param_value(p: Param, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise GraphError(f"parameter {p.name!r} takes an integer, got {value!r}")
    upper = (1 << 32) if p.upper is None else p.upper
    if not 0 <= int(value) < upper:
        raise GraphError(f"parameter {p.name!r} must be in [0, {upper}), got {int(value)}")
    return int(value)


def _scratch_key(node: Node, role: str) -> tuple[str, int, str]:
    return ("scratch", node.index, role)


def _as_buffer(r: Any) -> Buffer:
    return r.base if isinstance(r, BufferSlice) else r


def _rel(r: Any) -> int:
    return r.rel_offset if isinstance(r, BufferSlice) else 0


_INPUT_PACKERS = {layouts.INT8_4W: layouts.pack_int8_4w, layouts.INT8_4H4W: layouts.pack_int8_4h4w}


def _input_spec(shape: tuple[int, ...], dtype: np.dtype, layout: str) -> TensorSpec:
    if layout == DENSE:
        return TensorSpec(shape, dtype)
    if layout not in _INPUT_PACKERS or dtype != np.int8:
        raise GraphError(f"graph inputs are dense, or int8 in one of {sorted(_INPUT_PACKERS)}; "
                         f"got {dtype} in {layout!r}")
    packed = _INPUT_PACKERS[layout](np.zeros((int(np.prod(shape[:-1])), shape[-1]), np.int8))
    data = packed.arrays["data"]
    return TensorSpec(shape, dtype, layout, data.shape, data.dtype, tuple(sorted(packed.params.items())))


def _to_storage(name: str, spec: TensorSpec, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != spec.shape:
        raise GraphError(f"input {name!r} must have shape {spec.shape}, got {arr.shape}")
    if spec.layout == DENSE:
        if arr.dtype != spec.dtype:
            if spec.dtype.kind == "f" and arr.dtype.kind == "f":
                return np.ascontiguousarray(arr, dtype=spec.dtype)
            raise GraphError(f"input {name!r} must be {spec.dtype}, got {arr.dtype}")
        return np.ascontiguousarray(arr)
    if arr.dtype != np.int8:
        raise GraphError(f"input {name!r} must be int8, got {arr.dtype}")
    return _INPUT_PACKERS[spec.layout](arr.reshape(-1, arr.shape[-1])).arrays["data"]


def _from_storage(spec: TensorSpec, data: np.ndarray) -> np.ndarray:
    data = data[: math.prod(spec.stored_shape)].reshape(spec.stored_shape).copy()
    if spec.layout == DENSE:
        return data
    packed = layouts.PackedTensor(spec.layout, 1, spec.shape, {"data": data}, dict(spec.params))
    return layouts.UNPACKERS[spec.layout](packed)


def graph(device: Device | None = None, passes: Any = None) -> Graph:
    """Start capturing a graph: `with vkq.graph() as g: ...` (see the module docstring).
    `passes`: the rewrites run when it is built (default: vkq.passes.DEFAULT_PASSES; `()`
    for none)."""
    return Graph(device, passes)
