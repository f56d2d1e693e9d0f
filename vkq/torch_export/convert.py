"""Walking a `torch.export` program into a vkq graph (vkq.from_torch).

The program is first brought to its ATen inference form with an empty decomposition table
(`run_decompositions({})`: torchao's and quantized_decomposed's quantization ops, aten.linear
and aten.rms_norm stay whole), and RMSNorm written out by hand becomes aten.rms_norm
(vkq.torch_export.patterns). Every op is looked up in vkq.torch_export.handlers.HANDLERS
before anything is built, so all unsupported ops are named in one error. Then the nodes run
in order inside `vkq.graph()`: the program's user inputs become graph inputs, its parameters
and buffers numpy constants, its user outputs the graph outputs "output0", "output1", ...
Building the graph runs its passes (by default the fusion of quantize -> dequantize -> int4
linear, vkq.passes).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from vkq.graph import Graph, Value, graph
from vkq.runtime import Device
from vkq.tensor import DeviceTensor, to_device
from vkq.torch_export.handlers import HANDLERS, TorchExportError
from vkq.torch_export.patterns import fold_rms_norm

__all__ = ["TorchExportError", "from_torch"]


def from_torch(exported_program: Any, *, device: Device | None = None,
               passes: Any = None) -> Graph:
    """A built vkq graph that runs `exported_program` (from `torch.export.export`).

    Args:
        exported_program: a `torch.export.ExportedProgram` whose ops vkq supports: linear
            with int4 group-wise weights, dynamic per-token int8 activation quantization
            (torchao's 8da4w flow, or quantized_decomposed's per-token ops), rms_norm, add,
            mul, silu (HANDLERS lists them), with static shapes and float32 activations.
        device: the graph's device (default: vkq's default device).
        passes: the graph's passes (default: vkq.passes.DEFAULT_PASSES; `()` keeps the
            unfused quantize -> dequantize -> linear nodes).
    Returns:
        The graph: `g(name=array, ...)` with the program's user input names returns
        {"output0": ..., ...}; `g.nodes` lists what runs, `g.pass_log` what the passes fused.
    Raises:
        TorchExportError: an op vkq does not support (all of them named at once), or an op
            used in a way vkq cannot run (the node named); ImportError without PyTorch.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("vkq.from_torch needs PyTorch: pip install 'vkq[torch]'") from None
    if not isinstance(exported_program, torch.export.ExportedProgram):
        raise TypeError(f"vkq.from_torch takes a torch.export.ExportedProgram (from "
                        f"torch.export.export(model, args)), got "
                        f"{type(exported_program).__name__}")
    ep = exported_program.run_decompositions({})  # a new program: its graph is ours to rewrite
    fold_rms_norm(ep.graph)
    _check_supported(ep.graph)
    return Converter(ep, device, passes).run()


def op_key(node: Any) -> str:
    """The name HANDLERS knows an FX node's op by ("aten.linear.default", "getitem")."""
    target = node.target
    if getattr(target, "__name__", None) == "getitem" and getattr(target, "__module__", "") in (
            "_operator", "operator"):
        return "getitem"
    return str(target)


def _check_supported(fx_graph: Any) -> None:
    unsupported: Counter[str] = Counter()
    for node in fx_graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function" or op_key(node) not in HANDLERS:
            unsupported[f"{op_key(node)} ({node.op})" if node.op != "call_function"
                        else op_key(node)] += 1
    if unsupported:
        listed = ", ".join(f"{name} ({n} node{'s' if n > 1 else ''})"
                           for name, n in sorted(unsupported.items()))
        raise TorchExportError(
            f"vkq.from_torch: the program uses ops vkq does not support: {listed}. "
            f"Supported: {', '.join(sorted(HANDLERS))}")


class Converter:
    """Runs an exported program's nodes as vkq ops inside one graph capture."""

    def __init__(self, ep: Any, device: Device | None, passes: Any):
        self.ep = ep
        self.graph = graph(device, passes)
        self.env: dict[str, Any] = {}
        self._constants: dict[int, DeviceTensor] = {}

    def run(self) -> Graph:
        from torch.export.graph_signature import InputKind, OutputKind

        sig = self.ep.graph_signature
        kinds = {s.arg.name: s for s in sig.input_specs}
        bad = [s for s in sig.output_specs if s.kind != OutputKind.USER_OUTPUT]
        if bad:
            raise TorchExportError(f"vkq.from_torch: the program updates state "
                                   f"({', '.join(str(s.kind) for s in bad)}); vkq graphs run "
                                   f"programs without mutations")
        with self.graph as g:
            for node in self.ep.graph.nodes:
                if node.op == "placeholder":
                    spec = kinds[node.name]
                    self.env[node.name] = (self._input(g, node) if spec.kind == InputKind.USER_INPUT
                                           else self._constant(node, spec))
                elif node.op == "call_function":
                    self.env[node.name] = self._call(node)
                elif node.op == "output":
                    self._outputs(g, node)
        return g

    def _input(self, g: Graph, node: Any) -> Value:
        val = node.meta.get("val")
        shape = tuple(getattr(val, "shape", ()))
        if not all(isinstance(d, int) for d in shape):
            raise TorchExportError(f"vkq.from_torch: input {node.name!r} has dynamic shape "
                                   f"{list(shape)}; export with static shapes")
        if str(getattr(val, "dtype", None)) != "torch.float32":
            raise TorchExportError(f"vkq.from_torch: input {node.name!r} is "
                                   f"{getattr(val, 'dtype', type(val).__name__)}; vkq graphs "
                                   f"take float32 inputs")
        return g.input(node.name, shape, np.float32)

    def _constant(self, node: Any, spec: Any) -> np.ndarray:
        target = spec.target
        t = self.ep.state_dict.get(target)
        if t is None:
            t = self.ep.constants.get(target)
        if t is None:
            raise TorchExportError(f"vkq.from_torch: input {node.name!r} ({spec.kind}) has no "
                                   f"value in the program")
        return t.detach().cpu().numpy()

    def _call(self, node: Any) -> Any:
        def resolve(a: Any) -> Any:
            if hasattr(a, "op") and hasattr(a, "name") and a.name in self.env:
                return self.env[a.name]
            if isinstance(a, (list, tuple)):
                return type(a)(resolve(x) for x in a)
            return a

        args = [resolve(a) for a in node.args]
        kwargs = {k: resolve(v) for k, v in node.kwargs.items()}
        handler = HANDLERS[op_key(node)]
        try:
            return handler(self, *args, **kwargs)
        except TorchExportError as e:
            raise TorchExportError(f"vkq.from_torch: node {node.name!r} ({op_key(node)}): "
                                   f"{e}") from None

    def tensor(self, v: Any) -> Any:
        """An elementwise operand: a graph value, or a float constant uploaded once."""
        if isinstance(v, Value):
            return v
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            if id(v) not in self._constants:
                self._constants[id(v)] = to_device(v, device=self.graph.device)
            return self._constants[id(v)]
        raise TorchExportError(f"expected a tensor, got {type(v).__name__} {v!r}"[:200])

    def _outputs(self, g: Graph, node: Any) -> None:
        results = node.args[0]
        for i, r in enumerate(results if isinstance(results, (list, tuple)) else [results]):
            v = self.env.get(getattr(r, "name", None))
            if not isinstance(v, Value):
                raise TorchExportError(f"vkq.from_torch: output {i} is not an activation "
                                       f"computed by the program ({type(v).__name__})")
            g.output(f"output{i}", v)
