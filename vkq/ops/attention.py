"""attention (attention.comp.j2, attention_combine.comp.j2): causal grouped-query attention
of T query rows over a KV cache, the softmax in fp32 with a running max.

q [T, n_heads * D] holds positions pos .. pos + T - 1; row t attends cache rows 0 .. pos + t;
query head h reads kv head h // (n_heads // n_kv_heads). One workgroup takes a block of the
query heads that share a kv head (k and v are read once for all of them), one query row and
one chunk of the cache (flash-decoding): a decode step over a long context spreads over many
workgroups, each writing its (max, sum, partial output) to scratch, and a second dispatch
merges the chunks. When one chunk covers the whole cache, the first pass writes y itself.

The plan depends on the shapes only, never on the position: a graph records the chunks of
the whole cache (those past a replay's position leave at once), and an eager call with the
same shapes runs the same kernels on the same chunks, so the two agree bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from vkq.ops.common import ceil_div, check_fits, dense_need, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.ops.kv_write import cache_kind
from vkq.ops.positions import position_args
from vkq.reference.attention import attention_reference
from vkq.shaderlib import declared_variants, variant_name

KERNELS = ("auto", "single", "split")
#: first-pass workgroups the chunking aims at over the whole cache: from a context of a
#: quarter of the cache up, a decode step keeps a large GPU busy (H200: 132 SMs, ~4 each).
#: Smaller chunks would add scratch traffic (each chunk writes its partial output) and
#: merging work for little more parallelism.
TARGET_WORKGROUPS = 2048


def first_pass(kind: str, vec4: bool, final: bool) -> str:
    return variant_name("attention", KV=kind, VEC4=vec4, OUT="final" if final else "partial")


def kernel_params() -> dict[str, int]:
    """The first pass's shape (WG, LANES, MAX_HPW, SLOTS), as its variants declare it."""
    return declared_variants()[first_pass("f32", True, True)][1]


def heads_per_block(group: int, units: int, params: Mapping[str, int]) -> int:
    """The most query heads of one kv head a workgroup takes: a divisor of the group, at most
    MAX_HPW (its shared arrays), with every output element in a thread's SLOTS."""
    fit = min(params["MAX_HPW"], params["SLOTS"] * params["WG"] // units)
    return max(h for h in range(1, fit + 1) if group % h == 0)


def chunking(rows: int, n_blocks: int, cache_rows: int, tile: int, kernel: str) -> tuple[int, int]:
    """(chunk_len, n_chunks): whole tiles per chunk; "single" one chunk, "split" one tile,
    "auto" as few tiles as give about TARGET_WORKGROUPS workgroups over the whole cache."""
    tiles = ceil_div(cache_rows, tile)
    if kernel == "single":
        per = tiles
    elif kernel == "split":
        per = 1
    else:
        per = ceil_div(tiles, max(1, TARGET_WORKGROUPS // (rows * n_blocks)))
    return per * tile, ceil_div(cache_rows, per * tile)


def _head_dim(q: TensorSpec, k: TensorSpec, v: TensorSpec, n_heads: int, n_kv: int) -> int:
    """D, after checking the tensors' kinds, that the heads divide and that q, k and v agree."""
    require_dense_f32("attention", "q", q, "[T, n_heads * head_dim]")
    if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
        raise ValueError(f"attention: n_heads ({n_heads}) must be a positive multiple of "
                         f"n_kv_heads ({n_kv})")
    if q.shape[1] % n_heads or q.shape[1] == 0:
        raise ValueError(f"attention: q rows have {q.shape[1]} values, not n_heads ({n_heads}) "
                         f"heads of a head_dim >= 1")
    dim = q.shape[1] // n_heads
    if k.shape[1] != n_kv * dim:
        raise ValueError(f"attention: k_cache rows have {k.shape[1]} values; n_kv_heads * "
                         f"head_dim = {n_kv} * {dim} = {n_kv * dim}")
    if v.shape != k.shape or v.dtype != k.dtype:
        raise ValueError(f"attention: v_cache ({v.describe()}) must match k_cache "
                         f"({k.describe()})")
    if q.shape[0] > k.shape[0]:
        raise ValueError(f"attention: {q.shape[0]} query rows do not fit a cache of {k.shape[0]} rows")
    return dim


def _elements(dim: int, kind: str, params: Mapping[str, int]) -> tuple[bool, int]:
    """(vec4, D in the kernel's elements): vec4 loads where D % 4 == 0."""
    vec4 = dim % 4 == 0
    if kind == "f16" and not vec4:
        raise ValueError(f"attention: float16 caches need head_dim % 4 == 0, got {dim}")
    units = dim // 4 if vec4 else dim
    if units > params["SLOTS"] * params["WG"]:
        raise ValueError(f"attention: head_dim {dim} is over the kernel's "
                         f"{params['SLOTS'] * params['WG'] * (4 if vec4 else 1)}"
                         + ("" if vec4 else " (a multiple of 4 may be larger)"))
    return vec4, units


def _check_limits(rows: int, k: TensorSpec, caps: Any) -> None:
    if k.shape[0] * k.shape[1] >= 1 << 32:
        raise ValueError(f"attention: a cache of {k.shape[0]} x {k.shape[1]} exceeds the "
                         f"kernel's 32-bit index")
    most = min(caps.max_workgroup_count[1:])
    if rows > most:
        raise ValueError(f"attention: {rows} query rows per call are over this device's "
                         f"{most}; pass fewer rows per call")


@register
class Attention(Op):
    """Inputs "q" float32 [T, n_heads * D], "k_cache" and "v_cache" float32 or float16
    [max_seq, n_kv_heads * D]; attributes "pos" (int or graph parameter), "n_heads",
    "n_kv_heads", "kernel" ("auto", "single", "split"); output "y" float32 like q."""

    name = "attention"
    reference = staticmethod(attention_reference)

    def plan(self, inputs: Mapping[str, TensorSpec], attrs: Mapping[str, Any], weight: Any,
             device: Any) -> Plan:
        q, k, v = inputs["q"], inputs["k_cache"], inputs["v_cache"]
        kind = cache_kind("k_cache", k, self.name)
        cache_kind("v_cache", v, self.name)
        n_heads, n_kv = int(attrs["n_heads"]), int(attrs["n_kv_heads"])
        dim = _head_dim(q, k, v, n_heads, n_kv)
        rows, cache_rows = q.shape[0], k.shape[0]
        push, params_role = position_args(self.name, attrs["pos"], rows, cache_rows, "cache")
        if rows == 0:
            return Plan([], {"y": TensorSpec.dense(q.shape)})
        kp = kernel_params()
        vec4, units = _elements(dim, kind, kp)
        _check_limits(rows, k, device.caps)
        hpw = heads_per_block(n_heads // n_kv, units, kp)
        kernel = attrs.get("kernel", "auto")
        chunk_len, n_chunks = chunking(rows, n_heads // hpw, cache_rows, kp["WG"] // kp["LANES"], kernel)
        final = n_chunks == 1 and kernel != "split"
        common = {"head_dim": units, "n_heads": n_heads, "cache_rows": cache_rows,
                  "chunk_len": chunk_len, "n_chunks": n_chunks, **push}
        bufs = {"t_q": "q", "t_k": "k_cache", "t_v": "v_cache", "t_params": params_role}
        bufs.update({"t_out": "y"} if final else {"t_part": "scratch.part", "t_stats": "scratch.stats"})
        first = PlannedDispatch(first_pass(kind, vec4, final), (n_chunks, n_heads // hpw, rows), bufs,
                                dict(common, group=n_heads // n_kv, heads_per_block=hpw,
                                     kv_width=n_kv * units,
                                     # scores in log2 units: exp2 does the softmax
                                     scale=math.log2(math.e) / math.sqrt(dim)))
        if final:
            return Plan([first], {"y": TensorSpec.dense(q.shape)})
        return self._with_combine(first, common, (rows, n_heads, n_chunks, dim), vec4, params_role, device)

    @staticmethod
    def _with_combine(first: PlannedDispatch, common: dict[str, int], part: tuple[int, int, int, int],
                      vec4: bool, params_role: str, device: Any) -> Plan:
        """The split plan: the first pass's chunks go to scratch ([row][head][chunk][D] and
        [row][head][chunk] (max, sum)), then one merging workgroup per head and row."""
        check_fits(device.caps, [dense_need("attention's partial outputs", part),
                                 dense_need("attention's partial (max, sum)", part[:3] + (2,))])
        rows, n_heads = part[:2]
        combine = PlannedDispatch(
            variant_name("attention_combine", VEC4=vec4, SUBGROUP=bool(device.caps.subgroup_arithmetic)),
            (n_heads, rows, 1),
            {"t_out": "y", "t_part": "scratch.part", "t_stats": "scratch.stats", "t_params": params_role},
            common)
        return Plan([first, combine], {"y": TensorSpec.dense((rows, n_heads * part[3]))},
                    scratch={"scratch.part": 4 * math.prod(part), "scratch.stats": 8 * math.prod(part[:3])})


def describe_variants(caps: Any) -> dict[str, str]:
    return {"attention (cache in one chunk)": first_pass("f32", True, True),
            "attention (long cache: chunks)": first_pass("f32", True, False),
            "attention (long cache: merging the chunks)":
                variant_name("attention_combine", VEC4=True, SUBGROUP=bool(caps.subgroup_arithmetic)),
            "attention (float16 cache, one chunk)": first_pass("f16", True, True)}
