"""attention against the numpy reference: decode (T = 1, the one-row kernel) and prefill
(T > 1, the tiled kernel, and the one-row kernel where a device cannot run the tiled one);
contexts of 1, 2, 3 rows, around every chunk and tile boundary and of the whole cache;
prefill of 1 .. 64 rows after earlier tokens; grouped-query ratios 1, 3, 4, 8 and 16; head
dims 64, 128 and 512 (and odd ones); one chunk, and chunks merged by the last to finish, on
float32 and float16 caches; rows past a query's position are never read; the merge's
counters are left zero, so graph replays and eager calls in a row stay right and agree bit
for bit; the chunking follows the context and fills an H200; misuse is a clear error."""
from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest

import vkq
from vkq import shaderlib
from vkq.graph import GraphError
from vkq.ops import attention as op
from vkq.ops import contract
from vkq.ops.contract import TensorSpec
from vkq.reference import attention_reference, kv_write_reference

U = 2.0 ** -24  # fp32 unit roundoff
KIB = 1024


def tolerance(q, k, v, pos: int, n_heads: int, n_kv: int) -> np.ndarray:
    """Bound on |y - reference| per element, from the kernel's fp32 math (the caches as given:
    a float16 cache's values are exact in float32).

    Scores (log2 units, s = c q.k with c = log2(e) / sqrt(D)): q scaled and rounded, D products
    and sums: |ds| <= (D + 2) u c sum|q k|. exp2's argument s - m then carries 2 |ds| plus its
    own rounding u |s - m|, and exp2 is within (3 + 2|x|) ulp (Vulkan's precision), so every p
    is off by a factor (1 + e), e = ln2 (2 |ds| + u span) + (3 + 2 span) u. y = sum p v / sum p
    moves by at most 2 e max|v| from that, and the fp32 sums of L terms with their rescalings
    (the online max's alpha and the merge's weights multiply numerator and sum alike, so only
    their roundings count) add (L + 8) u max|v| each to the numerator and the sum."""
    rows, d = q.shape[0], q.shape[1] // n_heads
    group = n_heads // n_kv
    c = math.log2(math.e) / math.sqrt(d)
    out = np.empty((rows, n_heads))
    for t in range(rows):
        seen = pos + t + 1
        for h in range(n_heads):
            g = h // group
            qh = q[t, h * d:(h + 1) * d].astype(np.float64)
            kh = k[:seen, g * d:(g + 1) * d].astype(np.float64)
            s = c * kh @ qh
            span = s.max() - s.min()
            ds = (d + 2) * U * c * (np.abs(kh) @ np.abs(qh)).max()
            e = math.log(2) * (2 * ds + U * span) + (3 + 2 * span) * U
            vmax = np.abs(v[:seen, g * d:(g + 1) * d].astype(np.float64)).max()
            out[t, h] = vmax * (2 * e + 2 * (seen + 8) * U) + 1e-30
    return np.repeat(out, d, axis=1)


def check(y, q, k, v, pos, n_heads, n_kv) -> None:
    ref = attention_reference(q, k, v, pos, n_heads, n_kv)
    assert y.shape == ref.shape and y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - ref)
    tol = tolerance(q, k, v, pos, n_heads, n_kv)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"worst excess {np.max(err - tol)} at {worst}"


def inputs(rows: int, cache_rows: int, n_heads: int, n_kv: int, d: int, seed: int,
           dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((rows, n_heads * d)).astype(np.float32)
    k = rng.standard_normal((cache_rows, n_kv * d)).astype(dtype)
    v = rng.standard_normal((cache_rows, n_kv * d)).astype(dtype)
    return q, k, v


def on_device(device, *arrays):
    out = []
    for a in arrays:
        t = vkq.kv_cache(a.shape[0], a.shape[1], a.dtype, device=device)
        vkq.kv_write(t, a.astype(np.float32), 0)
        out.append(t)
    return out


def plan_of(device, rows, cache_rows, n_heads, n_kv, d, dtype=np.float32, kernel="auto"):
    """The op's plan for these shapes on `device` (anything with `caps`)."""
    cache = TensorSpec.dense((cache_rows, n_kv * d), dtype)
    return contract.get("attention").plan(
        {"q": TensorSpec.dense((rows, n_heads * d)), "k_cache": cache, "v_cache": cache},
        {"pos": 0, "n_heads": n_heads, "n_kv_heads": n_kv, "kernel": kernel}, None, device)


def one_dispatch(t, rows: int, kernel: str) -> str:
    """The traced kernel of one attention call: a single dispatch (the last chunk merges),
    the tiled kernel for prefill rows, one chunk for "single", chunks for "split"."""
    assert len(t.kernels) == 1, t.kernels
    name = t.kernels[0]
    assert name.startswith("attention_tiled_") == (rows > 1), name
    if kernel != "auto":
        assert ("_final" if kernel == "single" else "_split") in name, name
    return name


CASES = [  # rows, cache rows, pos, n_heads, n_kv_heads, head_dim
    (1, 40, 0, 2, 2, 64),        # a context of one row
    (1, 200, 76, 4, 1, 64),      # 77 rows: no multiple of a chunk; ratio 4
    (1, 96, 95, 2, 2, 128),      # the whole cache; ratio 1
    (1, 64, 40, 32, 8, 64),      # Llama's 32 / 8
    (1, 70, 69, 32, 8, 128),     # Llama-3-8B's heads, the whole cache
    (3, 100, 30, 8, 2, 128),     # prefill rows
    (5, 120, 115, 6, 2, 64),     # prefill to the cache's end; ratio 3 (30 of 32 query vectors)
    (5, 50, 7, 16, 1, 64),       # ratio 16: two blocks of 8 heads (tiled: 2 rows of 16 heads)
    (2, 45, 3, 4, 2, 6),         # head_dim 6: the scalar kernels
    (1, 33, 32, 2, 1, 36),       # head_dim 36: vec4, 9 elements a head
    (3, 40, 5, 4, 2, 36),        # ... tiled: 3 elements a lane, the last lane 2
    (4, 60, 20, 4, 2, 256),      # head_dim 256: tiled with 8 lanes a query vector
    (2, 30, 4, 2, 1, 512),       # 512: 16 lanes, over lavapipe's subgroups: the one-row kernel
]


@pytest.mark.parametrize("kernel", op.KERNELS)
@pytest.mark.parametrize("rows,cache_rows,pos,n_heads,n_kv,d", CASES)
def test_matches_reference(device, kernel, rows, cache_rows, pos, n_heads, n_kv, d):
    q, k, v = inputs(rows, cache_rows, n_heads, n_kv, d, seed=rows * 1000 + pos + d)
    with vkq.trace() as t:
        y = vkq.attention(q, k, v, pos, n_heads, n_kv, kernel=kernel, device=device)
    check(y, q, k, v, pos, n_heads, n_kv)
    tiled = op.tiled_spec(n_heads // n_kv, d // 4 if d % 4 == 0 else d, 4, device.caps) is not None
    name = one_dispatch(t, rows if tiled else 1, kernel)
    assert ("_vec4" in name) == (d % 4 == 0)


#: decode contexts: 1, 2, 3 rows, both sides of the chunk lengths (8, 16, 32, 64) and of the
#: one-row kernel's segments (WG / LANES = 64 rows), 127 / 129, the whole cache
DECODE_CONTEXTS = (1, 2, 3, 7, 8, 9, 15, 17, 31, 32, 33, 63, 65, 127, 128, 129, 191, 256)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("ratio", [1, 4, 8])
def test_decode_over_contexts_and_chunk_boundaries(device, dtype, ratio):
    p = op.decode_params()
    assert p["WG"] // p["LANES"] == 64  # the segment DECODE_CONTEXTS straddles
    n_kv, d, cache_rows = 2, 64, 256
    q, k, v = inputs(len(DECODE_CONTEXTS), cache_rows, n_kv * ratio, n_kv, d, seed=ratio, dtype=dtype)
    kd, vd = on_device(device, k, v)
    for kernel in op.KERNELS:
        for i, ctx in enumerate(DECODE_CONTEXTS):
            with vkq.trace() as t:
                y = vkq.attention(q[i:i + 1], kd, vd, ctx - 1, n_kv * ratio, n_kv, kernel=kernel).numpy()
            one_dispatch(t, 1, kernel)
            check(y, q[i:i + 1], k, v, ctx - 1, n_kv * ratio, n_kv)


PREFILL_ROWS = (1, 2, 3, 5, 17, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("ratio", [1, 4, 8])
def test_prefill_rows_after_earlier_tokens(device, dtype, ratio):
    """Prefill of M rows starting at 0, 1, 37 and at the cache's end: the causal mask inside
    the tiles (the tile's rows see different numbers of cache rows), tiles of rows past M,
    chunks that some of a tile's rows do not reach."""
    n_kv, d, cache_rows = 2, 64, 160
    n_heads = n_kv * ratio
    q, k, v = inputs(max(PREFILL_ROWS), cache_rows, n_heads, n_kv, d, seed=10 + ratio, dtype=dtype)
    kd, vd = on_device(device, k, v)
    for kernel in op.KERNELS:
        for rows in PREFILL_ROWS:
            for pos in (0, 1, 37, cache_rows - rows):
                with vkq.trace() as t:
                    y = vkq.attention(q[:rows], kd, vd, pos, n_heads, n_kv, kernel=kernel).numpy()
                one_dispatch(t, rows, kernel)
                check(y, q[:rows], k, v, pos, n_heads, n_kv)


def test_float16_caches_llama_heads(device):
    q, k, v = inputs(17, 300, 32, 8, 128, seed=11, dtype=np.float16)
    kd, vd = on_device(device, k, v)
    for rows, pos in ((1, 299), (17, 200)):
        with vkq.trace() as t:
            y = vkq.attention(q[:rows], kd, vd, pos, 32, 8).numpy()
        assert t.kernels[0].startswith("attention_tiled_f16_vec4" if rows > 1 else "attention_f16_vec4")
        check(y, q[:rows], k, v, pos, 32, 8)


def test_context_of_one_row_is_that_row_exactly(device):
    """One attended row: p = 2^0 = 1, y = v[0] * 1 / 1, on every path."""
    for rows in (1, 3):
        q, k, v = inputs(rows, 80, 4, 2, 64, seed=2)
        for kernel in op.KERNELS:
            y = vkq.attention(q, k, v, 0, 4, 2, kernel=kernel, device=device)
            np.testing.assert_array_equal(y[0], np.repeat(v[:1].reshape(1, 2, 64), 2, axis=1).reshape(-1))


@pytest.mark.parametrize("kernel", op.KERNELS)
@pytest.mark.parametrize("rows", [1, 5])
def test_rows_past_each_query_are_never_seen(device, kernel, rows):
    """Causality at the exact boundary: cache rows score higher the later they are, so each
    query row's output is dominated by its last visible row (pos + t); rows past it hold
    v = 1e4, which would show at once; rows past pos + T hold NaN, which would poison y."""
    n_heads, d, pos, cache_rows = 4, 64, 37, 100
    rng = np.random.default_rng(4)
    u = rng.standard_normal(d).astype(np.float32)
    u /= np.linalg.norm(u)
    q = np.tile(u * 8, (rows, n_heads)).astype(np.float32)
    k = np.full((cache_rows, d), np.nan, np.float32)
    v = np.full((cache_rows, d), np.nan, np.float32)
    seen = pos + rows
    k[:seen] = np.arange(seen)[:, None] * u[None] * 0.5 + 0.01 * rng.standard_normal((seen, d))
    v[:seen] = rng.standard_normal((seen, d))
    v[pos + 1:seen] += 1e4  # future rows of the first query rows
    y = vkq.attention(q, k, v, pos, n_heads, 1, kernel=kernel, device=device)
    check(y, q, k, v, pos, n_heads, 1)
    assert np.all(np.isfinite(y))
    assert np.abs(y[0]).max() < 100  # row 0 sees no row with v = 1e4


@pytest.mark.parametrize("kernel", op.KERNELS)
@pytest.mark.parametrize("rows", [1, 2])
def test_scores_far_past_the_exponent_range(device, kernel, rows):
    """Scores spread over hundreds (2^s overflows fp32 past s = 128): the running max (per
    segment or tile, per chunk, across chunks) must be the true max for every exp2 to stay
    finite."""
    q, k, v = inputs(rows, 150, 4, 2, 64, seed=12)
    q *= 300
    y = vkq.attention(q, k, v, 140, 4, 2, kernel=kernel, device=device)
    assert np.all(np.isfinite(y))
    check(y, q, k, v, 140, 4, 2)


@pytest.mark.parametrize("rows", [1, 5])
def test_long_chunks_of_several_tiles(device, rows):
    """A cache long enough that "auto" puts several segments (one-row kernel) or tiles
    (tiled kernel) in a chunk: the online max rescales inside each chunk, then the chunks
    merge."""
    n_heads, n_kv, d, cache_rows = 32, 8, 64, 2000
    plan = plan_of(device, rows, cache_rows, n_heads, n_kv, d)
    split = op.Split(plan.dispatches[0].push["split"], plan.dispatches[0].push["chunk_min"],
                     plan.dispatches[0].push["chunk_max"])
    assert split.chunks(cache_rows) > 1 and split.chunk_len(cache_rows) >= 64
    q, k, v = inputs(rows, cache_rows, n_heads, n_kv, d, seed=8)
    q *= 3  # peaked softmax: the running max moves
    check(vkq.attention(q, k, v, cache_rows - rows, n_heads, n_kv, device=device), q, k, v,
          cache_rows - rows, n_heads, n_kv)


def test_many_chunks_merge_under_contention(device):
    """Chunks of 8 rows over 2048: 256 workgroups per unit race to their counters (lavapipe
    runs workgroups on parallel threads), three calls in a row on the same counters."""
    q, k, v = inputs(3, 2048, 8, 2, 64, seed=14, dtype=np.float16)
    kd, vd = on_device(device, k, v)
    for rows, pos in ((1, 2047), (3, 2045), (1, 1000)):
        y = vkq.attention(q[:rows], kd, vd, pos, 8, 2, kernel="split").numpy()
        check(y, q[:rows], k, v, pos, 8, 2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_llama_decode_over_a_long_cache(device, dtype):
    """Llama-3-8B's heads over an 8192-row cache, at a 2048 context and the full one."""
    q, k, v = inputs(1, 8192, 32, 8, 128, seed=13, dtype=dtype)
    kd, vd = on_device(device, k, v)
    for pos in (2047, 8191):
        check(vkq.attention(q, kd, vd, pos, 32, 8).numpy(), q, k, v, pos, 32, 8)


def test_split_covers_every_context_within_the_grid():
    """Every context up to the cache gets at most max_chunks chunks (the grid and scratch),
    whole multiples of `least` rows (or `most`), and no empty chunk."""
    for split in (op.Split(33, 8, 8192), op.Split(1, 8, 304), op.Split(38, 8, 8),
                  op.Split(5, 32, 96), op.Split(3, 16, 400)):
        for cache_rows in (1, 7, 8, 9, 100, 300):
            most = split.max_chunks(cache_rows)
            for length in range(1, cache_rows + 1):
                c = split.chunk_len(length)
                assert c % split.least == 0 or c == split.most
                n = split.chunks(length)
                assert n <= most and (n - 1) * c < length <= n * c


def h200_caps(**change):
    """An H200 as vkq sees it (what matters to attention's routing)."""
    return types.SimpleNamespace(**dict(dict(
        device_type="discrete", subgroup_size=32, subgroup_shuffle=True, subgroup_arithmetic=True,
        max_shared_memory=48 * KIB, max_workgroup_count=(2 ** 31 - 1, 65535, 65535),
        max_storage_buffer_range=2 ** 32 - 1, max_memory_allocation_size=2 ** 40, name="H200"), **change))


def test_decode_chunks_follow_the_context_and_fill_an_h200():
    """Llama-3-8B decode (32 heads, 8 kv heads, D = 128) over an 8192-row cache: 4 heads a
    workgroup (all of a kv head's), and chunks cut by the context: 16 of 8 rows at 128 (128
    workgroups for 132 SMs), 32 of 64 at 2048 (2 per SM), never more than 33."""
    h200 = types.SimpleNamespace(caps=h200_caps())
    plan = plan_of(h200, 1, 8192, 32, 8, 128, np.float16)
    (d,) = plan.dispatches
    assert d.spec == {"DIM": 32, "HPW": 4} and d.variant == "attention_f16_vec4_split_subgroup"
    split = op.Split(d.push["split"], d.push["chunk_min"], d.push["chunk_max"])
    assert d.groups == (split.max_chunks(8192), 8, 1) == (33, 8, 1)
    assert (split.chunks(128), split.chunk_len(128)) == (16, 8)
    assert (split.chunks(2048), split.chunk_len(2048)) == (32, 64)
    assert split.chunks(8192) == 32
    assert plan.state == {"state.count": 4 * 8}   # one counter per kv head
    assert plan_of(h200, 1, 8192, 32, 8, 128, kernel="single").variants == ["attention_f32_vec4_final_subgroup"]


def test_prefill_tiles_on_an_h200():
    """Llama-3-8B prefill: 8 rows x 4 heads a workgroup (32 query vectors, 4 lanes each) over
    k and v tiles of 32 rows (32 KiB of shared memory); 512 rows fill the GPU with one chunk,
    17 rows (3 tiles) split their context."""
    h200 = types.SimpleNamespace(caps=h200_caps())
    (d,) = plan_of(h200, 512, 8192, 32, 8, 128).dispatches
    assert d.spec == {"DIM": 32, "HPW": 4, "LANES": 4, "BN": 32}
    assert d.groups == (1, 8, 64) and d.variant == "attention_tiled_f32_vec4_final"
    (d,) = plan_of(h200, 17, 8192, 32, 8, 128).dispatches
    assert d.groups == (11, 8, 3) and d.variant == "attention_tiled_f32_vec4_split"
    assert op.tiled_spec(4, 32, 16, h200_caps(max_shared_memory=16 * KIB))["BN"] == 8
    assert op.tiled_spec(1, 32, 16, h200.caps)["HPW"] == 1      # 32 rows a workgroup
    assert op.tiled_spec(16, 32, 16, h200.caps)["HPW"] == 16    # 2 rows of 16 heads
    assert op.tiled_spec(4, 256, 16, h200.caps)["LANES"] == 32  # D = 1024: 4 vectors
    assert op.tiled_spec(4, 32, 16, h200_caps(subgroup_shuffle=False)) is None
    assert op.tiled_spec(4, 128, 16, h200_caps(subgroup_size=8)) is None  # 16 lanes
    assert op.heads_per_block(12, 32, op.decode_params()) == 6  # a divisor of the group
    assert op.heads_per_block(4, 256, op.decode_params()) == 1  # D = 1024: one head


@pytest.mark.parametrize("change", [dict(subgroup_shuffle=False, subgroup_arithmetic=False),
                                    dict(subgroup_arithmetic=False), dict(max_shared_memory=16 * KIB)],
                         ids=["no-subgroups", "no-arithmetic", "16KiB"])
def test_device_fallbacks(device, monkeypatch, change):
    """Devices without subgroup operations run the one-row kernel's shared-memory variant,
    for prefill too (no tiled kernel without shuffles); 16 KiB of shared memory gets smaller
    k and v tiles."""
    caps = dataclasses.replace(device.caps, **change)
    monkeypatch.setattr(device, "caps", caps)
    cache_rows = 97 + len(change) + int(caps.max_shared_memory // KIB)  # shapes no other test plans
    q, k, v = inputs(17, cache_rows, 8, 2, 128, seed=15)
    for rows, kernel in ((1, "auto"), (1, "single"), (17, "auto"), (5, "split")):
        with vkq.trace() as t:
            y = vkq.attention(q[:rows], k, v, cache_rows - rows, 8, 2, kernel=kernel, device=device)
        check(y, q[:rows], k, v, cache_rows - rows, 8, 2)
        tiled = rows > 1 and caps.subgroup_shuffle
        one_dispatch(t, rows if tiled else 1, kernel)
        assert t.kernels[0].endswith("_subgroup") == (not tiled and caps.subgroup_arithmetic)
    if "max_shared_memory" in change:
        assert plan_of(device, 17, cache_rows, 8, 2, 128).dispatches[0].spec["BN"] == 8


@pytest.mark.parametrize("profile", [dict(subgroup_shuffle=s, subgroup_arithmetic=a, subgroup_size=n,
                                          max_shared_memory=m * KIB)
                                     for s in (True, False) for a in (True, False)
                                     for n in (4, 8, 32, 64) for m in (16, 32, 48)])
def test_routes_to_declared_supported_variants(profile):
    """On every device profile, every plan names a declared variant whose features the
    device has, and the tiled kernel's k and v tiles fit its shared memory."""
    dev = types.SimpleNamespace(caps=h200_caps(**profile))
    for (rows, n_heads, n_kv, d), dtype, kernel in zip(
            [(1, 32, 8, 128), (17, 32, 8, 128), (3, 4, 2, 6), (64, 16, 1, 1024), (5, 8, 8, 36)] * 6,
            [np.float32, np.float16] * 15, list(op.KERNELS) * 10):
        if dtype == np.float16 and d % 4:
            continue
        for dispatch in plan_of(dev, rows, 4096, n_heads, n_kv, d, dtype, kernel).dispatches:
            info = shaderlib.variant_info(dispatch.variant)
            assert all(getattr(dev.caps, f) for f in info.requires), (dispatch.variant, info.requires)
            if "BN" in dispatch.spec:
                unit = 16 if d % 4 == 0 else 4
                assert 2 * dispatch.spec["BN"] * dispatch.spec["DIM"] * unit <= dev.caps.max_shared_memory
    for variant in op.describe_variants(dev.caps).values():
        assert all(getattr(dev.caps, f) for f in shaderlib.variant_info(variant).requires)


def test_eager_calls_leave_the_counters_zero(device):
    """The merge's counters (the plan's state, kept for eager calls on the cached plan) are
    back to zero after every call: the next call counts its chunks from zero."""
    q, k, v = inputs(5, 120, 8, 2, 64, seed=16)
    kd, vd = on_device(device, k, v)
    for rows, pos in ((1, 119), (5, 100), (1, 40), (5, 3)):
        y = vkq.attention(q[:rows], kd, vd, pos, 8, 2, kernel="split").numpy()
        check(y, q[:rows], k, v, pos, 8, 2)
        plan = plan_of(device, rows, 120, 8, 2, 64, kernel="split")
        cached = [p for p in contract.get("attention")._plan_cache.values() if p[1].state]
        held = [p[1]._state_buffers for p in cached if p[1].dispatches[0].groups == plan.dispatches[0].groups]
        assert held and all(h is not None for h in held)
        for _, bufs in held:
            assert not bufs["state.count"].read(np.uint32).any()


def test_write_prefill_then_three_decode_steps(device):
    """The decoder's sequence: kv_write a prompt and attend it, then three steps that each
    append one row and attend everything so far."""
    n_heads, n_kv, d, cache_rows, prompt = 8, 2, 64, 90, 6
    rng = np.random.default_rng(6)
    k_cache = vkq.kv_cache(cache_rows, n_kv * d, device=device)
    v_cache = vkq.kv_cache(cache_rows, n_kv * d, device=device)
    k_host = np.zeros((cache_rows, n_kv * d), np.float32)
    v_host = k_host.copy()
    pos = 0
    for rows in (prompt, 1, 1, 1):
        q, k, v = inputs(rows, rows, n_heads, n_kv, d, seed=int(rng.integers(1 << 30)))
        vkq.kv_write(k_cache, k, pos)
        vkq.kv_write(v_cache, v, pos)
        k_host = kv_write_reference(k_host, k, pos)
        v_host = kv_write_reference(v_host, v, pos)
        y = vkq.attention(vkq.to_device(q, device=device), k_cache, v_cache, pos, n_heads, n_kv)
        check(y.numpy(), q, k_host, v_host, pos, n_heads, n_kv)
        pos += rows
    assert pos == prompt + 3


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decode_graph_replays_equal_eager_bit_for_bit(device, dtype):
    """One decode step captured once (kv_write of k and v at the position parameter, then
    attention), replayed step after step; the same steps eagerly on other caches give the
    same bits, and every replay matches the reference. The chunks follow the position: one
    at first, then more, merged by the last (a counter not reset would leave y unwritten)."""
    n_heads, n_kv, d, cache_rows, steps = 8, 2, 64, 160, 40
    width = n_kv * d
    caches = [vkq.kv_cache(cache_rows, width, dtype, device=device) for _ in range(4)]
    with vkq.graph() as g:
        pos = g.param("pos")
        q, k, v = g.input("q", (1, n_heads * d)), g.input("k", (1, width)), g.input("v", (1, width))
        kc = vkq.kv_write(caches[0], k, pos)
        vc = vkq.kv_write(caches[1], v, pos)
        g.output("y", vkq.attention(q, kc, vc, pos, n_heads, n_kv))
    try:
        kind = np.dtype(dtype).name.replace("float", "f")
        sub = "_subgroup" if op.decode_subgroup(device.caps) else ""
        assert g.kernel_names == [f"kv_write_{kind}", f"kv_write_{kind}", f"attention_{kind}_vec4_split{sub}"]
        rng = np.random.default_rng(7)
        host_k = np.zeros((cache_rows, width), dtype)
        host_v = host_k.copy()
        for p in list(range(steps)) + [cache_rows - 2, cache_rows - 1]:
            qs, ks, vs = inputs(1, 1, n_heads, n_kv, d, seed=int(rng.integers(1 << 30)))
            y = g(q=qs, k=ks, v=vs, pos=p)["y"]
            vkq.kv_write(caches[2], ks, p)
            vkq.kv_write(caches[3], vs, p)
            eager = vkq.attention(qs, caches[2], caches[3], p, n_heads, n_kv).numpy()
            np.testing.assert_array_equal(y, eager)
            host_k = kv_write_reference(host_k, ks, p)
            host_v = kv_write_reference(host_v, vs, p)
            check(y, qs, host_k, host_v, p, n_heads, n_kv)
        with pytest.raises(GraphError, match=r"parameter 'pos' must be in \[0, 160\), got 160"):
            g(q=qs, k=ks, v=vs, pos=cache_rows)
    finally:
        g.close()


@pytest.mark.parametrize("kernel", op.KERNELS)
def test_prefill_graph_with_position_parameter(device, kernel):
    """Prefill of 17 rows captured once, replayed at several positions (the same one twice in
    a row with new queries: a stale output would show) against eager calls and the reference."""
    n_heads, n_kv, d, cache_rows, rows = 8, 2, 128, 100, 17
    k_cache, v_cache = (vkq.kv_cache(cache_rows, n_kv * d, device=device) for _ in range(2))
    _, k, v = inputs(rows, cache_rows, n_heads, n_kv, d, seed=9)
    vkq.kv_write(k_cache, k, 0)
    vkq.kv_write(v_cache, v, 0)
    with vkq.graph() as g:
        pos = g.param("pos")
        g.output("y", vkq.attention(g.input("q", (rows, n_heads * d)), k_cache, v_cache, pos,
                                    n_heads, n_kv, kernel=kernel))
    try:
        assert g.kernel_names[0].startswith("attention_tiled_")
        for i, p in enumerate((0, 17, 17, 50, 5, cache_rows - rows)):
            q = inputs(rows, 1, n_heads, n_kv, d, seed=100 + i)[0]
            y = g(q=q, pos=p)["y"]
            np.testing.assert_array_equal(y, vkq.attention(q, k_cache, v_cache, p, n_heads, n_kv,
                                                           kernel=kernel).numpy())
            check(y, q, k, v, p, n_heads, n_kv)
        with pytest.raises(GraphError, match=r"must be in \[0, 84\), got 84"):
            g(q=q, pos=cache_rows - rows + 1)
    finally:
        g.close()


def test_errors(device):
    q, k, v = inputs(2, 20, 4, 2, 8, seed=1)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be a positive multiple of n_kv_heads \(3\)"):
        vkq.attention(q, k, v, 0, 4, 3, device=device)
    with pytest.raises(ValueError, match="q rows have 32 values, not n_heads \\(3\\)"):
        vkq.attention(q, k, v, 0, 3, 1, device=device)
    with pytest.raises(ValueError, match=r"k_cache rows have 16 values; n_kv_heads \* head_dim = 1 \* 8 = 8"):
        vkq.attention(q, k, v, 0, 4, 1, device=device)
    with pytest.raises(ValueError, match="v_cache .* must match k_cache"):
        vkq.attention(q, k, v[:10], 0, 4, 2, device=device)
    with pytest.raises(IndexError, match=r"positions \[19, 21\) are out of a cache of"):
        vkq.attention(q, k, v, 19, 4, 2, device=device)
    with pytest.raises(IndexError, match=r"positions \[-1, "):
        vkq.attention(q, k, v, -1, 4, 2, device=device)
    with pytest.raises(ValueError, match="21 query rows do not fit a cache of 20 rows"):
        vkq.attention(np.zeros((21, 32), np.float32), k, v, 0, 4, 2, device=device)
    with pytest.raises(TypeError, match="q must be a dense float32"):
        vkq.attention(q[0], k, v, 0, 4, 2, device=device)
    with pytest.raises(TypeError, match="pos must be an integer"):
        vkq.attention(q, k, v, 0.0, 4, 2, device=device)
    with pytest.raises(ValueError, match="n_kv_heads must be an integer > 0"):
        vkq.attention(q, k, v, 0, 4, 0, device=device)
    with pytest.raises(ValueError, match="kernel must be one of"):
        vkq.attention(q, k, v, 0, 4, 2, kernel="flash", device=device)
    with pytest.raises(ValueError, match="float16 caches need head_dim % 4 == 0, got 6"):
        kd, vd = on_device(device, *inputs(1, 8, 1, 1, 6, seed=0, dtype=np.float16)[1:])
        vkq.attention(np.zeros((1, 6), np.float32), kd, vd, 0, 1, 1)
    with pytest.raises(ValueError, match="head_dim 2048 is over the kernel's 1024"):
        vkq.attention(np.zeros((1, 2048), np.float32), np.zeros((4, 2048), np.float32),
                      np.zeros((4, 2048), np.float32), 0, 1, 1, device=device)
    with pytest.raises(GraphError, match="host array"):
        with vkq.graph() as g:
            vkq.attention(g.input("q", q.shape), k, v, g.param("pos"), 4, 2)
