"""attention against the numpy reference: decode (T = 1) and prefill rows, contexts of one
row, of a length that is no multiple of the chunk and of the whole cache, grouped-query
ratios 1, 3, 4 and 16, head dims 64 and 128 (and an odd one), both paths (one chunk; chunks
then a merging pass), float32 and float16 caches; rows past a query's position are never
read; a decode loop captured once replays bit for bit like eager calls; misuse is a clear
error."""
from __future__ import annotations

import math

import numpy as np
import pytest

import vkq
from vkq.graph import GraphError
from vkq.ops.attention import TARGET_WORKGROUPS, chunking, heads_per_block, kernel_params
from vkq.reference import attention_reference, kv_write_reference

U = 2.0 ** -24  # fp32 unit roundoff
TILE = kernel_params()["WG"] // kernel_params()["LANES"]


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


CASES = [  # rows, cache rows, pos, n_heads, n_kv_heads, head_dim
    (1, 40, 0, 2, 2, 64),        # a context of one row
    (1, 200, 76, 4, 1, 64),      # 77 rows: no multiple of the chunk; ratio 4
    (1, 96, 95, 2, 2, 128),      # the whole cache; ratio 1
    (1, 64, 40, 32, 8, 64),      # Llama's 32 / 8
    (1, 70, 69, 32, 8, 128),     # Llama-3-8B's heads, the whole cache
    (3, 100, 30, 8, 2, 128),     # prefill rows
    (5, 120, 115, 6, 2, 64),     # prefill to the cache's end; ratio 3 (3 heads a block)
    (5, 50, 7, 16, 1, 64),       # ratio 16: two blocks of 8 heads
    (2, 45, 3, 4, 2, 6),         # head_dim 6: the scalar kernels
    (1, 33, 32, 2, 1, 36),       # head_dim 36: vec4, 9 elements a head
]


@pytest.mark.parametrize("kernel", ["auto", "single", "split"])
@pytest.mark.parametrize("rows,cache_rows,pos,n_heads,n_kv,d", CASES)
def test_matches_reference(device, kernel, rows, cache_rows, pos, n_heads, n_kv, d):
    q, k, v = inputs(rows, cache_rows, n_heads, n_kv, d, seed=rows * 1000 + pos + d)
    with vkq.trace() as t:
        y = vkq.attention(q, k, v, pos, n_heads, n_kv, kernel=kernel, device=device)
    check(y, q, k, v, pos, n_heads, n_kv)
    split = kernel == "split" or (kernel == "auto" and cache_rows > TILE)
    assert len(t.kernels) == (2 if split else 1)
    assert t.kernels[0].endswith("_partial" if split else "_final")
    assert ("_vec4" in t.kernels[0]) == (d % 4 == 0)


@pytest.mark.parametrize("kernel", ["auto", "single"])
def test_float16_caches(device, kernel):
    q, k, v = inputs(3, 150, 8, 2, 64, seed=11, dtype=np.float16)
    kd, vd = on_device(device, k, v)
    assert kd.dtype == np.float16
    with vkq.trace() as t:
        y = vkq.attention(q, kd, vd, 100, 8, 2, kernel=kernel).numpy()
    assert t.kernels[0].startswith("attention_f16_vec4")
    check(y, q, k, v, 100, 8, 2)


def test_context_of_one_row_is_that_row_exactly(device):
    """One attended row: p = 2^0 = 1, y = v[0] * 1 / 1, on both paths."""
    q, k, v = inputs(1, 80, 4, 2, 64, seed=2)
    for kernel in ("single", "split"):
        y = vkq.attention(q, k, v, 0, 4, 2, kernel=kernel, device=device)
        np.testing.assert_array_equal(y, np.repeat(v[:1].reshape(1, 2, 64), 2, axis=1).reshape(1, -1))


@pytest.mark.parametrize("kernel", ["single", "split"])
def test_rows_past_each_query_are_never_seen(device, kernel):
    """Causality at the exact boundary: cache rows score higher the later they are, so each
    query row's output is dominated by its last visible row (pos + t); rows past it hold
    v = 1e4, which would show at once; rows past pos + T hold NaN, which would poison y."""
    n_heads, d, pos, rows, cache_rows = 4, 64, 37, 5, 100
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


@pytest.mark.parametrize("kernel", ["single", "split"])
def test_scores_far_past_the_exponent_range(device, kernel):
    """Scores spread over hundreds (2^s overflows fp32 past s = 128): the running max (per
    tile, per chunk, across chunks) must be the true max for every exp2 to stay finite."""
    q, k, v = inputs(2, 150, 4, 2, 64, seed=12)
    q *= 300
    y = vkq.attention(q, k, v, 140, 4, 2, kernel=kernel, device=device)
    assert np.all(np.isfinite(y))
    check(y, q, k, v, 140, 4, 2)


def test_long_chunks_of_several_tiles(device):
    """A prefill over a cache long enough that "auto" puts several tiles in a chunk: the
    online max rescales inside each chunk, then the chunks merge."""
    rows, n_heads, n_kv, d, cache_rows = 5, 32, 8, 64, 2000
    chunk_len, n_chunks = chunking(rows, n_heads // 4, cache_rows, TILE, "auto")
    assert chunk_len == 2 * TILE and n_chunks > 1
    q, k, v = inputs(rows, cache_rows, n_heads, n_kv, d, seed=8)
    q *= 3  # peaked softmax: the running max moves
    check(vkq.attention(q, k, v, cache_rows - rows, n_heads, n_kv, device=device), q, k, v,
          cache_rows - rows, n_heads, n_kv)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_llama_decode_over_a_long_cache(device, dtype):
    """Llama-3-8B's heads over an 8192-row cache, at a 2048 context and the full one."""
    q, k, v = inputs(1, 8192, 32, 8, 128, seed=13, dtype=dtype)
    kd, vd = on_device(device, k, v)
    for pos in (2047, 8191):
        check(vkq.attention(q, kd, vd, pos, 32, 8).numpy(), q, k, v, pos, 32, 8)


def test_chunking_fills_a_gpu_for_decode():
    """Llama-3-8B decode (32 heads, 8 kv heads, D = 128) over an 8192-row cache: 4 heads a
    block, chunks of one tile, TARGET_WORKGROUPS in all, a quarter of them (4 per SM of an
    H200) at a 2048 context."""
    hpw = heads_per_block(4, 128 // 4, kernel_params())
    assert hpw == 4
    chunk_len, n_chunks = chunking(1, 32 // hpw, 8192, TILE, "auto")
    assert n_chunks * 32 // hpw == TARGET_WORKGROUPS
    assert chunk_len == TILE and math.ceil(2048 / chunk_len) * 32 // hpw == TARGET_WORKGROUPS // 4
    assert chunking(1, 8, 20, TILE, "auto") == (TILE, 1)            # small: one chunk
    assert chunking(4096, 8, 8192, TILE, "auto") == (8192, 1)       # long prefill: rows fill it
    assert heads_per_block(12, 32, kernel_params()) == 6             # a divisor of the group
    assert heads_per_block(4, 256, kernel_params()) == 1             # D = 1024: one head


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
    same bits. The cache is long enough that chunks past the position exist and are skipped."""
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
        sub = "_subgroup" if device.caps.subgroup_arithmetic else ""
        assert g.kernel_names == [f"kv_write_{kind}", f"kv_write_{kind}", f"attention_{kind}_vec4_partial",
                                  f"attention_combine_vec4{sub}"]
        rng = np.random.default_rng(7)
        host_k = np.zeros((cache_rows, width), dtype)
        host_v = host_k.copy()
        for p in list(range(steps)) + [cache_rows - 1]:
            qs, ks, vs = inputs(1, 1, n_heads, n_kv, d, seed=int(rng.integers(1 << 30)))
            y = g(q=qs, k=ks, v=vs, pos=p)["y"]
            vkq.kv_write(caches[2], ks, p)
            vkq.kv_write(caches[3], vs, p)
            eager = vkq.attention(qs, caches[2], caches[3], p, n_heads, n_kv).numpy()
            np.testing.assert_array_equal(y, eager)
            host_k = kv_write_reference(host_k, ks, p)
            host_v = kv_write_reference(host_v, vs, p)
            if p % 13 == 0 or p == cache_rows - 1:
                check(y, qs, host_k, host_v, p, n_heads, n_kv)
        with pytest.raises(GraphError, match=r"parameter 'pos' must be in \[0, 160\), got 160"):
            g(q=qs, k=ks, v=vs, pos=cache_rows)
    finally:
        g.close()


def test_prefill_graph_with_position_parameter(device):
    n_heads, n_kv, d, cache_rows, rows = 4, 2, 128, 64, 3
    k_cache, v_cache = (vkq.kv_cache(cache_rows, n_kv * d, device=device) for _ in range(2))
    q, k, v = inputs(rows, cache_rows, n_heads, n_kv, d, seed=9)
    vkq.kv_write(k_cache, k, 0)
    vkq.kv_write(v_cache, v, 0)
    with vkq.graph() as g:
        pos = g.param("pos")
        g.output("y", vkq.attention(g.input("q", q.shape), k_cache, v_cache, pos, n_heads, n_kv))
    try:
        for p in (0, 17, cache_rows - rows):
            y = g(q=q, pos=p)["y"]
            np.testing.assert_array_equal(y, vkq.attention(q, k_cache, v_cache, p, n_heads, n_kv).numpy())
            check(y, q, k, v, p, n_heads, n_kv)
        with pytest.raises(GraphError, match=r"must be in \[0, 62\), got 62"):
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
