"""The op contract: what every operator implements, so eager calls, graphs and passes treat
all ops alike.

An op is an `Op` subclass registered with `register`:

- `prepack(weight, device)` turns a logical constant (a QuantizedWeight...) into device
  buffers, once (ops without weights inherit a no-op);
- `plan(inputs, attrs, weight, device)` takes the input `TensorSpec`s and the attributes and
  returns a `Plan`: the dispatches (variant, specialization, workgroups, which buffer *role*
  each binding gets, push constants), the output specs and the scratch sizes. It touches no
  buffer, so a graph plans once at capture and an eager call plans per call (ops may cache);
- `record(stream, buffers, plan)` records the plan into a stream (a one-shot `CommandBatch`
  or a graph's program) with `buffers` mapping every role to a buffer range. The default
  records each planned dispatch as is; ops rarely need more.

Roles name what a binding is bound to: an input ("x"), an output ("y"), a constant the op
uploads ("bias"), a weight array ("weight.scales"), a scratch area ("scratch.partials"), or
"dummy" (a 16-byte buffer for an absent optional input, never read). `vkq.execute` resolves
roles to buffers for eager calls, `vkq.graph` for graphs.

Each op names its numpy reference (`reference`), which the tests compare it with.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

DENSE = "dense"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor as an op sees it: logical shape and dtype, layout, and how it is stored (the
    "data" array's shape and dtype; for the dense layout the logical ones)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str = DENSE
    storage_shape: tuple[int, ...] | None = None
    storage_dtype: np.dtype | None = None
    params: tuple[tuple[str, int], ...] = ()   # layout parameters (vkq.layouts PackedTensor)

    @classmethod
    def dense(cls, shape: tuple[int, ...], dtype: Any = np.float32) -> "TensorSpec":
        return cls(tuple(int(s) for s in shape), np.dtype(dtype))

    @property
    def format(self) -> str:
        """The layout (DeviceTensor's name for it)."""
        return self.layout

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return self.shape if self.storage_shape is None else self.storage_shape

    @property
    def stored_dtype(self) -> np.dtype:
        return self.dtype if self.storage_dtype is None else np.dtype(self.storage_dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.stored_shape) * self.stored_dtype.itemsize

    @property
    def rows(self) -> int:
        """Leading dimensions folded: M of an [..., K] activation."""
        return math.prod(self.shape[:-1])

    def describe(self) -> str:
        lay = "" if self.layout == DENSE else f" in layout {self.layout!r}"
        return f"{self.dtype} {list(self.shape)}{lay}"


@dataclasses.dataclass
class HostTensor:
    """A host (numpy) input in its stored form: `data` is the packed array for packed layouts."""

    spec: TensorSpec
    data: np.ndarray


def output_y(out: dict[str, Any]) -> Any:
    return out["y"]


@dataclasses.dataclass
class Call:
    """One call of an op, as `vkq.execute.run_op` takes it: tensor inputs by role (HostTensor,
    DeviceTensor or graph value), attributes, the weight, constant host arrays, and `finish`,
    which turns the outputs by role into what the public function returns."""

    inputs: dict[str, Any]
    attrs: dict[str, Any]
    weight: Any = None
    constants: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    finish: Callable[[dict[str, Any]], Any] = output_y
    #: a result known without running anything (an empty batch): returned as is
    immediate: Any = None


@dataclasses.dataclass
class PlannedDispatch:
    """One dispatch of a plan; `buffers` maps each binding name to a role."""

    variant: str
    groups: tuple[int, int, int]
    buffers: dict[str, str]
    push: dict[str, Any]
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: (device, kernel, roles in binding order, packed push constants, groups), made on the
    #: first record: cached plans record without looking anything up again
    _resolved: Any = dataclasses.field(default=None, repr=False, compare=False)

    def resolve(self, device: Any) -> tuple[Any, tuple[str, ...], bytes, tuple[int, int, int]]:
        r = self._resolved
        if r is None or r[0] is not device:
            kern = device.kernel(self.variant, **self.spec)
            if set(self.buffers) != set(kern.binding_names):
                raise ValueError(f"{self.variant}: planned bindings {sorted(self.buffers)} do not "
                                 f"match the declared {list(kern.binding_names)}")
            groups = tuple(int(g) for g in self.groups) + (1,) * (3 - len(self.groups))
            limit = device.caps.max_workgroup_count
            if any(g < 0 or g > lim for g, lim in zip(groups, limit)):
                raise ValueError(f"{self.variant}: workgroup count {groups} outside the device "
                                 f"limit {limit}")
            roles = tuple(self.buffers[n] for n in kern.binding_names)
            r = self._resolved = (device, kern, roles, kern.pack_push_constants(self.push), groups)
        return r[1:]


@dataclasses.dataclass
class Plan:
    """What an op call dispatches and produces (see the module docstring)."""

    dispatches: list[PlannedDispatch]
    outputs: dict[str, TensorSpec]
    scratch: dict[str, int] = dataclasses.field(default_factory=dict)
    #: output role -> (base role, byte offset): outputs that are parts of another output
    #: (a fused q/k/v projection's three results are parts of one buffer)
    views: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    #: input roles the op updates in place (a KV cache): they must be DeviceTensors, which
    #: graphs capture by reference, so the state persists from one call or replay to the next
    writes: frozenset[str] = frozenset()

    @property
    def variants(self) -> list[str]:
        return [d.variant for d in self.dispatches]


class Op:
    """Base class of every operator (see the module docstring)."""

    #: registry key, also the name graphs and profiles show
    name: ClassVar[str] = ""
    #: the numpy reference this op is tested against
    reference: ClassVar[Callable[..., Any] | None] = None
    #: roles of constant host arrays the op uploads (eager: per call; graphs: once)
    constant_roles: ClassVar[tuple[str, ...]] = ()

    def prepack(self, weight: Any, device: Any) -> Any:
        """Device-resident form of `weight` (None for ops without weights)."""
        return None

    def linear_call(self, x: Any, w: Any, bias: Any, options: Mapping[str, Any]) -> Call:
        """Linear ops: check `vkq.linear`'s arguments (`options`: its keyword arguments) and
        say how to run them. `w` is the weight, or a vkq.FusedWeight-like object with
        `weight`, `parts` and `epilogue`."""
        raise NotImplementedError(f"{self.name} is not a linear op")

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        raise NotImplementedError

    def record(self, stream: Any, buffers: Mapping[str, Any], plan: Plan) -> None:
        """Record `plan` into `stream` (anything with CommandBatch's `add_dispatch`: a batch,
        or a graph's recorder)."""
        dev = stream.device
        for d in plan.dispatches:
            kern, roles, push, groups = d.resolve(dev)
            stream.add_dispatch(kern, groups, [buffers[r] for r in roles], push)


OPS: dict[str, Op] = {}
#: (weight format, activation kind) -> linear op name
LINEAR_OPS: dict[tuple[str, str], str] = {}


def register(op_cls: type[Op]) -> type[Op]:
    """Class decorator: make one instance of the op available by its name."""
    if not op_cls.name or op_cls.name in OPS:
        raise ValueError(f"op name {op_cls.name!r} is empty or registered twice")
    OPS[op_cls.name] = op_cls()
    return op_cls


def register_linear(weight_format: str, activation: str, op_name: str) -> None:
    """`vkq.linear` routes a weight of `weight_format` with `activation` inputs to `op_name`."""
    LINEAR_OPS[weight_format, activation] = op_name


def get(name: str) -> Op:
    """The registered op called `name` (importing the op modules on first use)."""
    if name not in OPS:
        from vkq.ops import op_modules
        op_modules()
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no op {name!r} is registered; have {sorted(OPS)}") from None
