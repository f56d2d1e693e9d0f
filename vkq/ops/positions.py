"""A position an op takes as an attribute: an int, or a graph parameter (anything with a
`slot`: the graph's `g.param(...)`) that each replay writes into the graph's parameter buffer
(role "params"), so the recorded commands never change. Shaders read it as
`pos_slot == NO_SLOT ? pos : t_params[pos_slot]` (push constants "pos" and "pos_slot")."""
from __future__ import annotations

from typing import Any

NO_SLOT = 0xFFFFFFFF


def position_args(op: str, pos: Any, upper: int, what: str) -> tuple[dict[str, int], str]:
    """Push constants ("pos", "pos_slot") and the role of the parameter binding for a
    position that must lie in [0, upper) (upper >= 1: the op checked that its rows fit at
    all). An int out of range is an IndexError now (`what`
    describes the rows it would address); a graph parameter is bounded, so a replay with a
    value out of range is refused before anything runs."""
    slot = getattr(pos, "slot", None)
    if slot is None:
        if not 0 <= int(pos) < upper:
            raise IndexError(f"{op}: position {int(pos)} is out of range: {what}")
        return {"pos": int(pos), "pos_slot": NO_SLOT}, "dummy"
    if hasattr(pos, "bound"):
        pos.bound(upper)
    return {"pos": 0, "pos_slot": int(slot)}, "params"


def check_position(pos: Any) -> Any:
    """`pos` as the ops take it: an int, or a graph parameter as is (TypeError otherwise)."""
    if hasattr(pos, "slot"):
        return pos
    if isinstance(pos, bool) or not hasattr(pos, "__index__"):
        raise TypeError(f"pos must be an integer or a graph parameter, got {pos!r}")
    return int(pos)
