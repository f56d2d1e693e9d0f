"""Observing which kernel variants run: `with vkq.trace() as t: ...; t.kernels`."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

_active: list["Trace"] = []


@dataclasses.dataclass
class Trace:
    """Names of the kernel variants dispatched while the trace was active, in order."""

    kernels: list[str] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def trace() -> Iterator[Trace]:
    """Record every kernel dispatched (on any device) inside the with-block."""
    t = Trace()
    _active.append(t)
    try:
        yield t
    finally:
        _active.remove(t)


def note_dispatch(kernel_name: str) -> None:
    for t in _active:
        t.kernels.append(kernel_name)
