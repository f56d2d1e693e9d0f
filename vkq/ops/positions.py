"""A position an op takes as an attribute: an int, or a graph parameter (anything with a
`slot`: the graph's `g.param(...)`) that each replay writes into the graph's parameter buffer
(role "params"), so the recorded commands never change. Shaders read it as
`pos_slot == NO_SLOT ? pos : t_params[pos_slot]` (push constants "pos" and "pos_slot")."""
from __future__ import annotations

from typing import Any

NO_SLOT = 0xFFFFFFFF


def position_args(op: str, pos: Any, rows: int, capacity: int, what: str) -> tuple[dict[str, int], str]:
    """Push constants ("pos", "pos_slot") and the role of the parameter binding for `rows`
    consecutive positions starting at `pos` in a `what` ("table", "cache") of `capacity`
    rows (the op checked rows <= capacity). An int out of range is an IndexError now; a
    graph parameter is bounded, so a replay with a value out of range is refused before
    anything runs."""
    upper = capacity - rows + 1
    slot = getattr(pos, "slot", None)
    if slot is None:
        if not 0 <= int(pos) < upper:
            raise IndexError(f"{op}: positions [{int(pos)}, {int(pos) + rows}) are out of a "
                             f"{what} of {capacity} rows")
        return {"pos": int(pos), "pos_slot": NO_SLOT}, "dummy"
    if hasattr(pos, "bound"):
        pos.bound(upper)
    return {"pos": 0, "pos_slot": int(slot)}, "params"


def check_position(pos: Any, name: str = "pos") -> Any:
    """`pos` as the ops take it: an int, or a graph parameter as is (TypeError otherwise)."""
    if hasattr(pos, "slot"):
        return pos
    if isinstance(pos, bool) or not hasattr(pos, "__index__"):
        raise TypeError(f"{name} must be an integer or a graph parameter, got {pos!r}")
    return int(pos)
