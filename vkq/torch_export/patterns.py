"""Rewrites of an exported FX graph before conversion: op patterns vkq runs as one op.

`fold_rms_norm` finds RMSNorm written out by hand, as Hugging Face's LlamaRMSNorm exports:

    pow(x, 2) -> mean(-1, keepdim) -> add(eps) -> rsqrt -> mul(x, .) [-> mul(weight, .)]

and replaces it with `aten.rms_norm(x, [K], weight, eps)`, which vkq.rms_norm runs. Each
intermediate must have no other use (metadata checks aside), or the pattern is left alone.
"""
from __future__ import annotations

from typing import Any


def _is_call(node: Any, target: Any) -> bool:
    return getattr(node, "op", None) == "call_function" and node.target is target


def _users(node: Any, checks: Any) -> list[Any]:
    """The users of `node` other than tensor-metadata checks."""
    return [u for u in node.users if u.target is not checks]


def _weight_of(mul: Any, normalized: Any, aten: Any, k: int) -> Any:
    """The [K] parameter `mul` scales `normalized` by, or None."""
    if not _is_call(mul, aten.mul.Tensor):
        return None
    others = [a for a in mul.args if a is not normalized]
    w = others[0] if len(others) == 1 else None
    shape = tuple(getattr(getattr(w, "meta", {}).get("val"), "shape", ()))
    return w if getattr(w, "op", None) == "placeholder" and shape == (k,) else None


def fold_rms_norm(fx_graph: Any) -> int:
    """Replace hand-written RMSNorm in `fx_graph` (module docstring); returns how many."""
    import torch

    aten = torch.ops.aten
    checks = aten._assert_tensor_metadata.default
    folded = 0
    for rsqrt in list(fx_graph.nodes):
        if not _is_call(rsqrt, aten.rsqrt.default):
            continue
        add = rsqrt.args[0]
        mean = add.args[0] if _is_call(add, aten.add.Tensor) else None
        power = mean.args[0] if _is_call(mean, aten.mean.dim) else None
        if not (_is_call(power, aten.pow.Tensor_Scalar) and power.args[1] == 2
                and isinstance(add.args[1], (int, float)) and len(mean.args) > 2
                and mean.args[2] is True):
            continue
        x = power.args[0]
        k = tuple(x.meta["val"].shape)[-1] if "val" in getattr(x, "meta", {}) else None
        if k is None or list(mean.args[1]) not in ([-1], [len(x.meta["val"].shape) - 1]):
            continue
        chain = [power, mean, add, rsqrt]
        scaled = _users(rsqrt, checks)
        if any(len(_users(n, checks)) != 1 for n in chain) or not (
                _is_call(scaled[0], aten.mul.Tensor) and set(scaled[0].args) == {x, rsqrt}):
            continue
        normalized = scaled[0]
        end, weight = normalized, None
        after = _users(normalized, checks)
        if len(after) == 1 and _weight_of(after[0], normalized, aten, k) is not None:
            end, weight = after[0], _weight_of(after[0], normalized, aten, k)
        with fx_graph.inserting_after(end):
            norm = fx_graph.call_function(aten.rms_norm.default,
                                          (x, [k], weight, float(add.args[1])))
        end.replace_all_uses_with(norm)
        for node in reversed(chain + [normalized] + ([end] if end is not normalized else [])):
            for check in [u for u in node.users if u.target is checks]:
                fx_graph.erase_node(check)
            fx_graph.erase_node(node)
        folded += 1
    return folded
