"""Operators: each module packs its inputs, picks a kernel variant, and dispatches it.

A module may define `describe_variants(caps) -> {situation: variant}` (shown by
`python -m vkq info`). Benchmarks and tuning sweeps live in `vkq.bench.suites`: ops never
import `vkq.bench`.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def op_modules() -> list[Any]:
    """Every op module, imported (which registers its ops with vkq.ops.contract)."""
    return [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]


def variant_choices(caps: Any) -> dict[str, str]:
    """What every op would dispatch on a device with these capabilities."""
    out: dict[str, str] = {}
    for module in op_modules():
        describe = getattr(module, "describe_variants", None)
        if describe is not None:
            out.update(describe(caps))
    return out
