"""RopeTable: a model's rotary-embedding cos/sin tables, computed once on the host (in
transformers' float32 conventions, vkq.reference.rope) and uploaded once per device, where
`vkq.rope` reads them."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vkq.ops.common import check_fits, dense_need, positive_finite
from vkq.reference.rope import LLAMA3_KEYS, rope_inv_freq, rope_tables
from vkq.runtime import Buffer, Device, default_device

#: rope types a RopeTable computes (transformers' names)
ROPE_TYPES = ("default", "llama3")


class DeviceRopeTable:
    """A RopeTable's cos and sin tables [max_positions, head_dim // 2] on one device (what
    the rope op binds as "weight.cos" / "weight.sin"). Owns its buffers: `close()` frees them."""

    def __init__(self, device: Device, head_dim: int, max_positions: int, cos: Buffer, sin: Buffer):
        self.device, self.head_dim, self.max_positions = device, head_dim, max_positions
        self.cos, self.sin = cos, sin

    @property
    def closed(self) -> bool:
        return self.cos.closed or self.sin.closed

    def buffers(self) -> dict[str, Buffer]:
        return {"cos": self.cos, "sin": self.sin}

    def close(self) -> None:
        self.cos.close()
        self.sin.close()


class RopeTable:
    """Rotary embedding tables for heads of `head_dim` at positions [0, max_positions).

    Args:
        head_dim: per-head width d (even).
        max_positions: positions the table covers (vkq.rope refuses positions past it).
        theta: the frequency base (transformers' `rope_theta`).
        scaling: None (rope type "default"), or transformers' `rope_scaling` dict for rope
            type "llama3": factor, low_freq_factor, high_freq_factor and
            original_max_position_embeddings ("rope_type"/"type" may be given; it must then
            be "llama3", or "default" with no other keys).

    `inv_freq` [d/2] and the `cos`/`sin` tables [max_positions, d/2] are float32 host
    arrays (read-only); their device copies are made on first use per device and freed with
    the device or by `release()`.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 500000.0,
                 scaling: Mapping[str, Any] | None = None):
        self.head_dim = _positive_int("head_dim", head_dim)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {head_dim}")
        self.max_positions = _positive_int("max_positions", max_positions)
        self.theta = positive_finite("theta", theta)
        self.scaling = _llama3_scaling(scaling)
        self.inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling)
        self.cos, self.sin = rope_tables(self.head_dim, self.max_positions, self.theta, self.scaling)
        for a in (self.inv_freq, self.cos, self.sin):
            a.setflags(write=False)
        self._copies: dict[int, DeviceRopeTable] = {}

    def prepacked(self, device: Device | None = None) -> DeviceRopeTable:
        """The tables on `device` (uploaded on first use; again if that copy was closed)."""
        device = device or default_device()
        copy = self._copies.get(id(device))
        if copy is not None and copy.device is device and device.handle is not None and not copy.closed:
            return copy
        check_fits(device.caps, [dense_need("RoPE cos/sin tables", self.cos.shape,
                                            remedy="use a smaller max_positions")])
        cos = device.upload(self.cos)
        try:
            sin = device.upload(self.sin)
        except BaseException:
            cos.close()
            raise
        copy = self._copies[id(device)] = DeviceRopeTable(device, self.head_dim, self.max_positions, cos, sin)
        return copy

    def release(self) -> None:
        """Free every device copy now (graphs that use one then refuse to replay)."""
        for copy in self._copies.values():
            copy.close()
        self._copies.clear()

    def __repr__(self) -> str:
        kind = "default" if self.scaling is None else f"llama3 {self.scaling}"
        return (f"RopeTable(head_dim={self.head_dim}, max_positions={self.max_positions}, "
                f"theta={self.theta}, {kind})")


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _llama3_scaling(scaling: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """None for the default rope type, else the four llama3 numbers, checked."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        raise TypeError(f"scaling must be None or a dict (transformers' rope_scaling), got {scaling!r}")
    rest = dict(scaling)
    rope_type = rest.pop("rope_type", rest.pop("type", "llama3"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported; RopeTable computes {list(ROPE_TYPES)}")
    if rope_type == "default":
        if rest:
            raise ValueError(f"rope type 'default' takes no scaling parameters, got {sorted(rest)}")
        return None
    missing, unknown = sorted(set(LLAMA3_KEYS) - set(rest)), sorted(set(rest) - set(LLAMA3_KEYS))
    if missing or unknown:
        raise ValueError(f"llama3 scaling needs exactly {list(LLAMA3_KEYS)}; missing {missing}, "
                         f"unknown {unknown}")
    out = {k: positive_finite(k, rest[k]) for k in LLAMA3_KEYS[:3]}
    out["original_max_position_embeddings"] = _positive_int(
        "original_max_position_embeddings", rest["original_max_position_embeddings"])
    if not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ValueError(f"llama3 scaling needs high_freq_factor > low_freq_factor, got "
                         f"{out['high_freq_factor']} and {out['low_freq_factor']}")
    return out
