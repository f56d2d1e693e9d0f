"""attention (attention.comp.j2, attention_tiled.comp.j2, glsl/attention_split.glsl): causal
grouped-query attention of T query rows over a KV cache, the softmax in fp32 with a running max.

q [T, n_heads * D] holds positions pos .. pos + T - 1; row t attends cache rows 0 .. pos + t;
query head h reads kv head h // (n_heads // n_kv_heads). Two kernels, each reading k and v
once for all the query heads of a kv head that a workgroup holds:

- "attention" (decode, T == 1): one query row per workgroup, a block of query heads;
- "attention_tiled" (prefill, T > 1): a workgroup holds WG / LANES query vectors (BM rows x
  the heads of a block) and streams tiles of k and v through shared memory once for all of
  them. Where the device lacks the subgroup shuffles it needs (or lanes as many as a large
  head_dim asks), prefill runs the decode kernel, one workgroup per row.

Both cut a row's context into chunks, one per workgroup (flash-decoding), so that a decode
step fills the GPU (Split: the chunk length follows the context length, computed in the
shader from the position, so one recorded graph serves short and long contexts alike). The
chunk that finishes last merges the partial results in the same dispatch, found by an atomic
counter per (rows, block) unit that it resets to zero. The counters are the plan's persistent
state (Plan.state): scratch cannot hold them, since a graph's arena hands scratch bytes to
other nodes between replays; graphs and cached eager plans own them, zeroed once.

The plan depends on the shapes only, never on the position: an eager call and a graph replay
with the same shapes run the same kernels on the same chunks and agree bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from vkq.ops.common import ceil_div, check_fits, dense_need, require_dense_f32
from vkq.ops.contract import Op, Plan, PlannedDispatch, TensorSpec, register
from vkq.ops.kv_write import cache_kind
from vkq.ops.positions import position_args
from vkq.reference.attention import attention_reference
from vkq.shaderlib import declared_variants, variant_name

KERNELS = ("auto", "single", "split")
#: Vulkan reports no SM count. Discrete GPUs: the chunks aim at 2 workgroups per SM of an
#: H200 (132 SMs), the largest GPU vkq targets (a smaller one runs the grid in more waves).
#: More chunks are shorter but cost the merge more partials to read (a single workgroup per
#: unit reads them all); fewer leave SMs idle. Not yet tuned on the GPU.
GPU_TARGET_WORKGROUPS = 2 * 132
#: Integrated GPUs and CPUs (lavapipe runs workgroups on a few threads): a few dozen.
OTHER_TARGET_WORKGROUPS = 32
#: The shortest chunk ("auto") and the chunk of "split" (cache rows): at a context of 128 a
#: Llama-3-8B decode step (8 kv heads) gets 16 chunks of 8, 128 workgroups for 132 SMs.
MIN_CHUNK = 8
#: shared memory the tiled kernel keeps besides its k and v tiles (bytes, rounded up)
TILED_OTHER_SHARED = 256


def target_workgroups(caps: Any) -> int:
    """Workgroups a call's chunks aim at on this device (the constants above)."""
    return GPU_TARGET_WORKGROUPS if getattr(caps, "device_type", "discrete") == "discrete" \
        else OTHER_TARGET_WORKGROUPS


@dataclasses.dataclass(frozen=True)
class Split:
    """How a context of `length` cache rows is cut into chunks (attention_split.glsl computes
    the same from the push constants split, chunk_min and chunk_max): at most `want` chunks
    of a multiple of `least` rows, at most `most` rows each."""

    want: int
    least: int
    most: int

    def chunk_len(self, length: int) -> int:
        rounded = ceil_div(ceil_div(length, self.want), self.least) * self.least
        return min(self.most, max(self.least, rounded))

    def chunks(self, length: int) -> int:
        return ceil_div(length, self.chunk_len(length))

    def max_chunks(self, cache_rows: int) -> int:
        """The most chunks a context of up to `cache_rows` rows gets (the grid's x, the
        scratch's chunk stride): `want`, unless `least` or `most` force fewer or more."""
        return max(min(self.want, ceil_div(cache_rows, self.least)), ceil_div(cache_rows, self.most))


def choose_split(kernel: str, units: int, cache_rows: int, least: int, caps: Any) -> Split:
    """The split for `units` workgroups per chunk (row groups x head blocks): "single" one
    chunk, "split" chunks of MIN_CHUNK rows (more where the grid's x limit says), "auto" as
    many chunks of at least `least` rows as give about target_workgroups(caps)."""
    whole = ceil_div(cache_rows, MIN_CHUNK) * MIN_CHUNK
    if kernel == "single":
        return Split(1, MIN_CHUNK, whole)
    if kernel == "split":
        most_x = caps.max_workgroup_count[0]
        size = max(MIN_CHUNK, ceil_div(ceil_div(cache_rows, most_x), MIN_CHUNK) * MIN_CHUNK)
        return Split(ceil_div(cache_rows, size), size, size)
    return Split(max(1, ceil_div(target_workgroups(caps), units)), least, max(whole, least))


def decode_params() -> dict[str, int]:
    """The decode kernel's template shape (WG, LANES, MAX_HPW, SLOTS)."""
    return declared_variants()[variant_name("attention", KV="f32", VEC4=True, OUT="final",
                                            SUBGROUP=False)][1]


def tiled_params() -> dict[str, int]:
    """The tiled kernel's template shape (WG, MAX_UNITS, MAX_BN)."""
    return declared_variants()[variant_name("attention_tiled", KV="f32", VEC4=True, OUT="final")][1]


def largest_divisor(n: int, at_most: int) -> int:
    return max(h for h in range(1, min(n, at_most) + 1) if n % h == 0)


def heads_per_block(group: int, units: int, params: Mapping[str, int]) -> int:
    """The decode kernel's query heads per workgroup: a divisor of the group (one kv head),
    at most MAX_HPW (its shared arrays), with every output element in a thread's SLOTS."""
    return largest_divisor(group, min(params["MAX_HPW"], params["SLOTS"] * params["WG"] // units))


def decode_spec(group: int, units: int) -> dict[str, int]:
    return {"DIM": units, "HPW": heads_per_block(group, units, decode_params())}


def tiled_spec(group: int, units: int, unit_bytes: int, caps: Any) -> dict[str, int] | None:
    """The tiled kernel's specialization (DIM, HPW, LANES, BN), or None where it cannot run.

    LANES threads share a query vector, each holding at most MAX_UNITS of its elements: the
    smallest power of two >= 4 that does, as long as the lanes fit in one subgroup (they
    add up their dot products by shuffles). A workgroup holds WG / LANES vectors: the most
    heads of one kv head that divide the group, times as many rows as fill it. BN, the rows
    of a k (and v) tile in shared memory: the largest power of two up to MAX_BN that fits."""
    p = tiled_params()
    lanes = 4
    while lanes * p["MAX_UNITS"] < units:
        lanes *= 2
    if (lanes > p["WG"] or not getattr(caps, "subgroup_shuffle", False)
            or lanes > getattr(caps, "subgroup_size", 0)):
        return None
    per_row = 2 * units * unit_bytes  # a k row and a v row
    bn = p["MAX_BN"]
    while bn > 1 and bn * per_row + TILED_OTHER_SHARED > caps.max_shared_memory:
        bn //= 2
    if bn * per_row + TILED_OTHER_SHARED > caps.max_shared_memory:
        return None
    return {"DIM": units, "HPW": largest_divisor(group, p["WG"] // lanes), "LANES": lanes, "BN": bn}


def decode_subgroup(caps: Any) -> bool:
    """The decode kernel's subgroup variant: shuffles across a row's LANES lanes, subgroup
    max and sum across rows."""
    return bool(caps.subgroup_arithmetic and caps.subgroup_shuffle
                and getattr(caps, "subgroup_size", 0) >= decode_params()["LANES"])


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


def _elements(dim: int, kind: str) -> tuple[bool, int]:
    """(vec4, D in the kernels' elements): vec4 loads where D % 4 == 0."""
    vec4 = dim % 4 == 0
    if kind == "f16" and not vec4:
        raise ValueError(f"attention: float16 caches need head_dim % 4 == 0, got {dim}")
    units = dim // 4 if vec4 else dim
    p = decode_params()
    if units > p["SLOTS"] * p["WG"]:
        raise ValueError(f"attention: head_dim {dim} is over the kernel's "
                         f"{p['SLOTS'] * p['WG'] * (4 if vec4 else 1)}"
                         + ("" if vec4 else " (a multiple of 4 may be larger)"))
    return vec4, units


def _check_limits(k: TensorSpec, grid: tuple[int, int, int], caps: Any) -> None:
    if k.shape[0] * k.shape[1] >= 1 << 32:
        raise ValueError(f"attention: a cache of {k.shape[0]} x {k.shape[1]} exceeds the "
                         f"kernel's 32-bit index")
    if grid[1] > caps.max_workgroup_count[1] or grid[2] > caps.max_workgroup_count[2]:
        raise ValueError(f"attention: {grid[2]} groups of query rows x {grid[1]} blocks of heads "
                         f"are over this device's workgroup counts "
                         f"{tuple(caps.max_workgroup_count[1:])}; pass fewer rows per call")


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
        caps = device.caps
        vec4, units = _elements(dim, kind)
        group = n_heads // n_kv
        spec = tiled_spec(group, units, 16 if vec4 else 4, caps) if rows > 1 else None
        if spec is not None:
            rows_per_group, least = (tiled_params()["WG"] // spec["LANES"]) // spec["HPW"], spec["BN"]
        else:
            spec, rows_per_group, least = decode_spec(group, units), 1, MIN_CHUNK
        row_groups, blocks = ceil_div(rows, rows_per_group), n_heads // spec["HPW"]
        split = choose_split(attrs.get("kernel", "auto"), row_groups * blocks, cache_rows, least, caps)
        n_chunks = split.max_chunks(cache_rows)
        grid = (n_chunks, blocks, row_groups)
        _check_limits(k, grid, caps)
        final = n_chunks == 1
        out = "final" if final else "split"
        variant = (variant_name("attention_tiled", KV=kind, VEC4=vec4, OUT=out) if rows_per_group > 1
                   else variant_name("attention", KV=kind, VEC4=vec4, OUT=out, SUBGROUP=decode_subgroup(caps)))
        bufs = {"t_out": "y", "t_q": "q", "t_k": "k_cache", "t_v": "v_cache", "t_params": params_role}
        push = dict(push, n_heads=n_heads, group=group, kv_width=n_kv * units, cache_rows=cache_rows,
                    rows=rows, scale=math.log2(math.e) / math.sqrt(dim),  # scores in log2 units
                    split=split.want, chunk_min=split.least, chunk_max=split.most, n_chunks=n_chunks)
        y = {"y": TensorSpec.dense(q.shape)}
        if final:
            return Plan([PlannedDispatch(variant, grid, bufs, push, spec)], y)
        part = (rows, n_heads, n_chunks, dim)
        check_fits(caps, [dense_need("attention's partial outputs", part),
                          dense_need("attention's partial (max, sum)", part[:3] + (2,))])
        bufs.update(t_part="scratch.part", t_stats="scratch.stats", t_count="state.count")
        return Plan([PlannedDispatch(variant, grid, bufs, push, spec)], y,
                    scratch={"scratch.part": 4 * math.prod(part), "scratch.stats": 8 * math.prod(part[:3])},
                    state={"state.count": 4 * row_groups * blocks})


def describe_variants(caps: Any) -> dict[str, str]:
    sub = decode_subgroup(caps)
    tiled = tiled_spec(4, 32, 16, caps) is not None
    return {"attention (decode, context in one chunk)":
                variant_name("attention", KV="f32", VEC4=True, OUT="final", SUBGROUP=sub),
            "attention (decode, long context: chunks, merged by the last)":
                variant_name("attention", KV="f16", VEC4=True, OUT="split", SUBGROUP=sub),
            "attention (prefill)":
                variant_name("attention_tiled", KV="f16", VEC4=True, OUT="final") if tiled
                else variant_name("attention", KV="f16", VEC4=True, OUT="final", SUBGROUP=sub)}
