"""Runs the registered suites and prints/saves the table."""
from __future__ import annotations

import json
import sys
import time
from typing import Iterable

from vkq.bench import SUITES, BenchContext, Row, suites
from vkq.bench.roofline import StreamingRead
from vkq.bench.timing import measure_dispatch_overhead
from vkq.runtime import Device


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def format_table(rows: Iterable[Row]) -> str:
    header = ("suite", "shape", "kernel", "us", "iso us", "GB/s", "%roof", "TOPS", "%peak", "note")
    body = [(r.suite, r.shape, r.kernel, _fmt(r.us, ".2f"), _fmt(r.iso_us, ".2f"), _fmt(r.gbps, ".1f"),
             _fmt(r.pct_roofline, ".1f"), _fmt(r.tops, ".2f"), _fmt(r.pct_peak, ".1f"), r.note)
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, body)])


def run(device: Device, names: list[str] | None, quick: bool, repeats: int,
        compare: frozenset[str], roofline_bytes: int,
        only_m: frozenset[int] | None = None) -> tuple[list[Row], dict]:
    suites.load()
    unknown = set(names or []) - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; have {list(SUITES)}")
    say = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    say(f"read roofline on {device.caps.name} ({roofline_bytes >> 20} MiB)")
    with StreamingRead(device, roofline_bytes) as stream:
        roof = stream.measure(repeats)
        ctx = BenchContext(device=device, roofline_gbps=roof["gbps"], quick=quick,
                           repeats=repeats, compare=compare, progress=say, only_m=only_m)
        rows = [Row("roofline", f"{roof['bytes'] >> 20} MiB", "read_bandwidth", roof["ns"] / 1e3,
                    bytes=roof["bytes"], roofline_gbps=roof["gbps"]),
                Row.timed("overhead", "1 workgroup", "read_bandwidth",
                          measure_dispatch_overhead(device, repeats),
                          note="empty dispatch: floor of every timed row")]
        for name, suite in SUITES.items():
            if names and name not in names:
                continue
            say(f"suite {name}")
            stream.keep_busy()
            for row in suite(ctx):
                row.roofline_gbps = ctx.roofline_gbps
                rows.append(row)
                say(f"  {row.shape} {row.kernel}: {row.us:.2f} us")
    meta = {"device": device.caps.name, "driver": device.caps.driver,
            "device_type": device.caps.device_type, "roofline_gbps": roof["gbps"], "quick": quick}
    return rows, meta


def save_json(path: str, rows: list[Row], meta: dict) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": [r.as_dict() for r in rows]}, f, indent=1)
