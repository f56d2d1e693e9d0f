"""RoPE: RopeTable's frequencies and tables against a float64 evaluation of transformers'
formulas, vkq.rope against the numpy reference (eager, DeviceTensor, graph replays with a
position parameter), and every misuse as a clear error."""
from __future__ import annotations

import math

import numpy as np
import pytest

import vkq
from vkq.graph import GraphError
from vkq.reference import rope_reference

U = 2.0 ** -24                  # float32 unit roundoff
FLT_MIN = float(np.finfo(np.float32).tiny)  # room for a device that flushes subnormals
LLAMA32_1B = dict(head_dim=64, theta=500000.0, scaling=dict(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192))
LLAMA3_8B = dict(head_dim=128, theta=500000.0, scaling=None)
CONFIGS = {"llama-3.2-1b": LLAMA32_1B, "llama-3-8b": LLAMA3_8B}
HF_SCALING = dict(LLAMA32_1B["scaling"], rope_type="llama3")  # as config.json spells it


# -- the frequencies, evaluated directly in float64, with the float32 evaluation's error bound ---
def inv_freq_float64(head_dim: int, theta: float, scaling: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """(inv_freq, bound): transformers' formula in float64, and a first-order bound on how
    far RopeTable's float32 evaluation (one rounding per step, see vkq.reference.rope) may be
    from it."""
    e = np.arange(0, head_dim, 2) / head_dim
    inv = theta ** -e
    # exponent rounded to float32 (exact for power-of-two head_dim), pow and reciprocal
    # rounded once each: relative error <= ln(theta) e u + 2u
    rel = math.log(theta) * e * U + 2 * U
    if scaling is None:
        return inv, rel * inv
    f, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    rel_w = rel + 3 * U  # 2 pi rounded, reciprocal, product
    # the float32 branches equal these only away from the thresholds: the configs tested are
    assert np.all(np.abs(wavelen / (ctx / lo) - 1) > 4 * rel_w)
    assert np.all(np.abs(wavelen / (ctx / hi) - 1) > 4 * rel_w)
    low, high = wavelen > ctx / lo, wavelen < ctx / hi
    r = ctx / wavelen
    s = (r - lo) / (hi - lo)
    a, b = (1 - s) * inv / f, s * inv
    # r: reciprocal and product on top of wavelen's error; s: a subtraction and a division
    # (by hi - lo rounded); then 1 - s, two products, a division, a sum
    err_s = (r * (rel_w + 2 * U) + U * np.abs(r - lo)) / (hi - lo) + 2 * U * np.abs(s)
    err_mid = inv * abs(1 - 1 / f) * err_s + (3 * U + rel) * np.abs(a) + (U + rel) * np.abs(b) \
        + U * np.abs(a + b)
    out = np.where(low, inv / f, np.where(high, inv, a + b))
    bound = np.where(low, (rel + U) * inv / f, np.where(high, rel * inv, err_mid))
    return out, bound * (1 + 1e-6)  # the second-order terms


@pytest.mark.parametrize("name", CONFIGS)
def test_inv_freq_matches_the_float64_formula(name):
    cfg = CONFIGS[name]
    table = vkq.RopeTable(cfg["head_dim"], 16, cfg["theta"], cfg["scaling"])
    want, bound = inv_freq_float64(cfg["head_dim"], cfg["theta"], cfg["scaling"])
    assert table.inv_freq.dtype == np.float32 and table.inv_freq.shape == (cfg["head_dim"] // 2,)
    assert np.all(np.abs(table.inv_freq - want) <= bound)
    assert table.inv_freq[0] == 1.0  # theta ** 0


def test_llama3_scaling_leaves_high_frequencies_and_divides_low_ones():
    cfg = LLAMA32_1B
    plain = vkq.RopeTable(cfg["head_dim"], 1, cfg["theta"]).inv_freq
    scaled = vkq.RopeTable(cfg["head_dim"], 1, cfg["theta"], cfg["scaling"]).inv_freq
    wavelen = 2 * np.pi / plain.astype(np.float64)
    high, low = wavelen < 8192 / 4, wavelen > 8192 / 1
    assert high.sum() and low.sum() and (~high & ~low).sum()  # all three regimes appear
    assert np.array_equal(scaled[high], plain[high])
    assert np.array_equal(scaled[low], plain[low] / np.float32(32))
    mid = ~high & ~low
    assert np.all((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 32))


@pytest.mark.parametrize("name,positions", [("llama-3.2-1b", 131072), ("llama-3-8b", 8192)])
def test_tables_match_the_float64_angles(name, positions):
    cfg = CONFIGS[name]
    table = vkq.RopeTable(cfg["head_dim"], positions, cfg["theta"], cfg["scaling"])
    inv, bound = inv_freq_float64(cfg["head_dim"], cfg["theta"], cfg["scaling"])
    p = np.arange(positions, dtype=np.float64)[:, None]
    angle = p * inv
    # transformers rounds p * inv_freq to float32 (u relative) on top of inv_freq's error;
    # cos and sin then move by at most the angle's error, and are rounded once
    tol = p * (bound + U * inv) + 2 * U
    assert table.cos.shape == table.sin.shape == (positions, cfg["head_dim"] // 2)
    assert table.cos.dtype == table.sin.dtype == np.float32
    assert np.all(np.abs(table.cos - np.cos(angle)) <= tol)
    assert np.all(np.abs(table.sin - np.sin(angle)) <= tol)
    assert np.all(table.cos[0] == 1) and np.all(table.sin[0] == 0)
    with pytest.raises(ValueError, match="read-only"):
        table.cos[1, 1] = 0


def test_scaling_as_a_transformers_config_spells_it():
    a = vkq.RopeTable(64, 8, scaling=HF_SCALING)
    b = vkq.RopeTable(64, 8, scaling=LLAMA32_1B["scaling"])
    assert np.array_equal(a.inv_freq, b.inv_freq) and np.array_equal(a.cos, b.cos)
    default = vkq.RopeTable(64, 8, scaling={"rope_type": "default"})
    assert np.array_equal(default.inv_freq, vkq.RopeTable(64, 8).inv_freq)


# -- the op against the reference ----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_table():
    return vkq.RopeTable(64, 300, scaling=dict(LLAMA32_1B["scaling"], original_max_position_embeddings=64))


def rope_bound(x: np.ndarray, table: vkq.RopeTable, pos: int, n_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """(exact, bound): RoPE of x in float64 with the float32 tables, and the float32 error
    bound: two products and a sum, each rounded once (or a fused multiply-add: no more),
    |err| <= u |x1 c| + u |x2 s| + u |out| <= 2.01 u (|x1 c| + |x2 s|) for out1 (x2 c and
    x1 s for out2); FLT_MIN for flushed subnormals."""
    t, half = x.shape[0], table.head_dim // 2
    h = x.astype(np.float64).reshape(t, n_heads, 2, half)
    c = table.cos[pos: pos + t, None, :].astype(np.float64)
    s = table.sin[pos: pos + t, None, :].astype(np.float64)
    x1, x2 = h[:, :, 0], h[:, :, 1]
    exact = np.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=2).reshape(x.shape)
    mag = np.stack([np.abs(x1 * c) + np.abs(x2 * s), np.abs(x2 * c) + np.abs(x1 * s)], axis=2)
    bound = mag.reshape(x.shape) * 2.01 * U + 2 * FLT_MIN
    return exact, bound


@pytest.mark.parametrize("rows,n_heads,pos", [
    (1, 1, 0), (1, 4, 299), (7, 3, 5), (5, 2, 295), (16, 8, 100), (33, 1, 267)])
def test_matches_reference(device, small_table, rows, n_heads, pos):
    rng = np.random.default_rng(rows * 100 + pos)
    x = (rng.standard_normal((rows, n_heads * 64)) * 4).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.rope(x, small_table, pos, n_heads, device=device)
    assert t.kernels == ["rope"]
    ref = rope_reference(x, small_table.cos, small_table.sin, pos, n_heads)
    exact, bound = rope_bound(x, small_table, pos, n_heads)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.all(np.abs(ref - exact) <= bound)
    assert np.all(np.abs(y - ref) <= 2 * bound)


@pytest.mark.parametrize("head_dim", [2, 6, 128])
def test_awkward_head_dims(device, head_dim):
    table = vkq.RopeTable(head_dim, 40, theta=10000.0)
    x = np.random.default_rng(head_dim).standard_normal((3, 5 * head_dim)).astype(np.float32)
    y = vkq.rope(x, table, 37, 5, device=device)
    exact, bound = rope_bound(x, table, 37, 5)
    assert np.all(np.abs(y - rope_reference(x, table.cos, table.sin, 37, 5)) <= 2 * bound)
    assert np.all(np.abs(y - exact) <= bound)


def test_position_zero_is_the_identity_and_pairs_keep_their_norms(device, small_table):
    # position 0 is the identity; elsewhere each (x1, x2) pair turns by its angle
    x = np.random.default_rng(1).standard_normal((2, 128)).astype(np.float32)
    np.testing.assert_array_equal(vkq.rope(x, small_table, 0, 2, device=device)[0], x[0])
    y = vkq.rope(x, small_table, 200, 2, device=device)
    pair_norm = lambda a: np.hypot(a.reshape(2, 2, 2, 32)[:, :, 0], a.reshape(2, 2, 2, 32)[:, :, 1])  # noqa: E731
    np.testing.assert_allclose(pair_norm(y), pair_norm(x), rtol=1e-5)


def test_device_tensors_give_a_new_device_tensor(device, small_table):
    x = np.random.default_rng(2).standard_normal((4, 128)).astype(np.float32)
    xd = vkq.to_device(x, device=device)
    yd = vkq.rope(xd, small_table, 10, 2)
    assert isinstance(yd, vkq.DeviceTensor) and yd.buffer is not xd.buffer
    np.testing.assert_array_equal(yd.numpy(), vkq.rope(x, small_table, 10, 2, device=device))
    np.testing.assert_array_equal(xd.numpy(), x)  # not in place
    empty = vkq.rope(np.zeros((0, 128), np.float32), small_table, 300, 2, device=device)
    assert empty.shape == (0, 128)


def test_graph_replays_with_a_position_parameter(device, small_table):
    rng = np.random.default_rng(3)
    rows, heads = 3, 2
    with vkq.graph(device) as g:
        x = g.input("x", (rows, heads * 64))
        pos = g.param("pos")
        g.output("y", vkq.rope(x, small_table, pos, heads))
    try:
        program = g._program
        for p in (0, 1, 150, 297):
            xs = rng.standard_normal((rows, heads * 64)).astype(np.float32)
            np.testing.assert_array_equal(g(x=xs, pos=p)["y"], vkq.rope(xs, small_table, p, heads, device=device))
            assert g._program is program  # nothing re-recorded
        with pytest.raises(GraphError, match=r"must be in \[0, 298\), got 298"):
            g(x=xs, pos=298)
        small_copy = small_table.prepacked(device)
        small_table.release()
        assert small_copy.closed
        with pytest.raises(GraphError, match="released"):
            g(x=xs, pos=0)
    finally:
        g.close()


def test_the_device_copy_is_made_once_per_device(device):
    table = vkq.RopeTable(64, 32)
    x = np.ones((1, 64), np.float32)
    vkq.rope(x, table, 0, 1, device=device)
    copy = table.prepacked(device)
    vkq.rope(x, table, 1, 1, device=device)
    assert table.prepacked(device) is copy and copy.device is device
    table.release()
    assert copy.closed and table.prepacked(device) is not copy
    np.testing.assert_array_equal(vkq.rope(x, table, 0, 1, device=device), x)
    table.release()


# -- misuse ---------------------------------------------------------------------------------------
def test_positions_past_the_table_are_refused(device, small_table):
    x = np.zeros((3, 64), np.float32)
    with pytest.raises(IndexError, match=r"positions \[298, 301\) are out of a table of 300"):
        vkq.rope(x, small_table, 298, 1, device=device)
    with pytest.raises(IndexError, match=r"positions \[-1, 2\)"):
        vkq.rope(x, small_table, -1, 1, device=device)
    with pytest.raises(IndexError, match="301 rows need positions past the table's 300"):
        with vkq.graph(device) as g:
            v = g.input("x", (301, 64))
            g.output("y", vkq.rope(v, small_table, g.param("pos"), 1))


def test_bad_arguments(device, small_table):
    x = np.zeros((2, 128), np.float32)
    with pytest.raises(ValueError, match=r"x has 128 columns, not n_heads \* head_dim = 3 \* 64"):
        vkq.rope(x, small_table, 0, 3, device=device)
    for heads in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_heads must be an integer >= 1"):
            vkq.rope(x, small_table, 0, heads, device=device)
    with pytest.raises(TypeError, match="pos must be an integer or a graph parameter"):
        vkq.rope(x, small_table, 1.0, 2, device=device)
    with pytest.raises(TypeError, match=r"x must be a dense float32 \[T, n_heads \* head_dim\]"):
        vkq.rope(np.zeros((1, 2, 64), np.float32), small_table, 0, 2, device=device)
    with pytest.raises(TypeError, match="x must be a float array"):
        vkq.rope(np.zeros((2, 128), np.int32), small_table, 0, 2, device=device)
    with pytest.raises(TypeError, match="table must be a vkq.RopeTable"):
        vkq.rope(x, (small_table.cos, small_table.sin), 0, 2, device=device)


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((63, 8), {}, ValueError, "head_dim must be even"),
    ((0, 8), {}, ValueError, "head_dim must be an integer >= 1"),
    ((64, 0), {}, ValueError, "max_positions must be an integer >= 1"),
    ((64, 8), {"theta": -1.0}, ValueError, "theta must be finite and > 0"),
    ((64, 8), {"scaling": {"factor": 8.0}}, ValueError, "missing .'high_freq_factor'"),
    ((64, 8), {"scaling": dict(HF_SCALING, rope_type="yarn")}, ValueError, "rope type 'yarn' is not supported"),
    ((64, 8), {"scaling": dict(HF_SCALING, high_freq_factor=1.0)}, ValueError, "high_freq_factor > low_freq_factor"),
    ((64, 8), {"scaling": dict(HF_SCALING, factor=float("nan"))}, ValueError, "factor must be finite"),
    ((64, 8), {"scaling": {"rope_type": "default", "factor": 2.0}}, ValueError, "takes no scaling parameters"),
    ((64, 8), {"scaling": 32.0}, TypeError, "scaling must be None or a dict"),
])
def test_bad_tables(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        vkq.RopeTable(*args, **kwargs)


def test_into_a_cache_equals_rope_then_kv_write(device, small_table):
    """out=cache: the keys' RoPE written straight to cache rows pos.. (one dispatch) gives the
    same cache as rope followed by kv_write, eagerly and in graph replays."""
    d = small_table.head_dim
    rng = np.random.default_rng(11)
    k = rng.standard_normal((3, 2 * d)).astype(np.float32)
    a = vkq.kv_cache(40, 2 * d, device=device)
    b = vkq.kv_cache(40, 2 * d, device=device)
    vkq.rope(k, small_table, 7, 2, out=a)
    vkq.kv_write(b, vkq.rope(k, small_table, 7, 2, device=device), 7)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not a.numpy()[:7].any() and not a.numpy()[10:].any()
    with vkq.graph() as g:
        pos = g.param("pos")
        x = g.input("k", (1, 2 * d))
        vkq.rope(x, small_table, pos, 2, out=a)
        g.output("k", x)
    try:
        for p in (0, 39, 20):
            g(k=k[:1], pos=p)
            vkq.kv_write(b, vkq.rope(k[:1], small_table, p, 2, device=device), p)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        with pytest.raises(GraphError, match=r"must be in \[0, 40\)"):
            g(k=k[:1], pos=40)  # the cache (40 rows) bounds the position, not the table
    finally:
        g.close()
    with pytest.raises(IndexError, match=r"positions \[38, 41\) are out of a cache of 40 rows"):
        vkq.rope(k, small_table, 38, 2, out=a)
    with pytest.raises(ValueError, match="the cache must be a dense float32"):
        vkq.rope(k, small_table, 0, 2, out=vkq.kv_cache(40, d, device=device))
    with pytest.raises(TypeError, match="updates 'cache' in place"):
        vkq.rope(k, small_table, 0, 2, out=np.zeros((40, 2 * d), np.float32))
