"""Benchmark suites, one module per op; each registers its suite with `vkq.bench.register`.

`ORDER` is the order `python -m vkq bench` runs them in (and the `--only` names).
"""
from __future__ import annotations

import importlib

ORDER = ("rms_norm", "coopmat_peak", "q4gsw_linear", "q8ta_linear", "qta8a_linear", "eager", "decode", "llama")


def load() -> None:
    """Import every suite module, so that each registers itself, in `ORDER`."""
    for name in ORDER:
        importlib.import_module(f"{__name__}.{name}")
