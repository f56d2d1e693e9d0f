"""`python -m vkq bench`: benchmarks are tools, never tests.

The suites live in `vkq.bench.suites`, one module per op, each registering itself with
`@register("name")`; a suite is a function taking a `BenchContext` and yielding `Row`s. The
bench imports the ops, never the other way round (`import vkq` does not load it). The runner measures the read roofline first, so every
suite can report its bandwidth as a fraction of what this device reaches in the same run.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from vkq.runtime import Device


@dataclasses.dataclass
class Row:
    suite: str
    shape: str
    kernel: str
    us: float
    bytes: int | None = None        # bytes moved (weights + scales + activations + outputs)
    ops: float | None = None        # arithmetic ops (2 per multiply-add) for compute-bound rows
    peak_tops: float | None = None  # the peak the TOPS are compared with, if any
    note: str = ""
    roofline_gbps: float | None = None  # filled in by the runner
    iso_us: float | None = None     # isolated per-dispatch time (`us` is the chained time)

    @classmethod
    def timed(cls, suite: str, shape: str, kernel: str, timing: Any, **fields: Any) -> "Row":
        """A row from a vkq.bench.timing.Timing: `us` chained, `iso_us` isolated, and a note
        when the SM clock was below its maximum."""
        note = "; ".join(n for n in (fields.pop("note", ""), timing.clock_note) if n)
        return cls(suite, shape, kernel, timing.chain_ns / 1e3, iso_us=timing.isolated_ns / 1e3,
                   note=note, **fields)

    @property
    def gbps(self) -> float | None:
        return None if self.bytes is None or self.us <= 0 else self.bytes / (self.us * 1e3)

    @property
    def pct_roofline(self) -> float | None:
        g = self.gbps
        return None if g is None or not self.roofline_gbps else 100.0 * g / self.roofline_gbps

    @property
    def tops(self) -> float | None:
        return None if self.ops is None or self.us <= 0 else self.ops / (self.us * 1e6)

    @property
    def pct_peak(self) -> float | None:
        t = self.tops
        return None if t is None or not self.peak_tops else 100.0 * t / self.peak_tops

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(gbps=self.gbps, pct_roofline=self.pct_roofline, tops=self.tops,
                 pct_peak=self.pct_peak)
        return d


@dataclasses.dataclass
class BenchContext:
    device: Device
    roofline_gbps: float
    quick: bool                 # smaller shapes and fewer repeats (CPU devices, smoke runs)
    repeats: int = 20
    l2_bytes: int = 64 << 20    # rotate weight copies over >= 2x this (docs/design.md §6)
    compare: frozenset[str] = frozenset()
    progress: Callable[[str], None] = lambda msg: None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: time only problems with these row counts M (None: all): `bench --m`
    only_m: frozenset[int] | None = None

    def wants_m(self, m: int) -> bool:
        """Whether the suites time problems of M rows (`bench --m`)."""
        return self.only_m is None or m in self.only_m


Suite = Callable[[BenchContext], Iterable[Row]]
SUITES: dict[str, Suite] = {}


def register(name: str) -> Callable[[Suite], Suite]:
    """Register a benchmark suite under `name` (runs in registration order)."""
    def deco(fn: Suite) -> Suite:
        SUITES[name] = fn
        return fn
    return deco
