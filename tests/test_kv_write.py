"""kv_write: rows of a KV cache overwritten in place, against the numpy reference (exact:
float32 rows are copied, float16 rows rounded to nearest even as numpy rounds), eagerly and
in graph replays with the position as a parameter; every misuse is a clear error."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.graph import GraphError
from vkq.reference import kv_write_reference

S, W = 24, 16


def filled_cache(device, dtype, seed: int = 0) -> tuple[vkq.DeviceTensor, np.ndarray]:
    """A cache holding random rows (so untouched rows are checked too) and its host copy."""
    rows = np.random.default_rng(seed).standard_normal((S, W)).astype(np.float32)
    cache = vkq.kv_cache(S, W, dtype, device=device)
    vkq.kv_write(cache, rows, 0)
    return cache, rows.astype(dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)  # NaN equals NaN here
    ok = ~np.isnan(a)
    assert np.array_equal(a[ok].view(np.uint8), b[ok].view(np.uint8))  # -0.0 is not 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("rows,pos", [(1, 0), (1, 7), (3, 5), (1, S - 1), (5, S - 5), (S, 0), (0, S)])
def test_writes_the_rows_in_place(device, dtype, rows, pos):
    cache, host = filled_cache(device, dtype, seed=rows + pos)
    x = np.random.default_rng(pos).standard_normal((rows, W)).astype(np.float32) * 100
    with vkq.trace() as t:
        out = vkq.kv_write(cache, x, pos)
    assert out is cache
    assert t.kernels == ([f"kv_write_{np.dtype(dtype).name.replace('float', 'f')}"] if rows else [])
    same_bits(cache.numpy(), kv_write_reference(host, x, pos))


def test_device_and_float64_inputs(device):
    cache, host = filled_cache(device, np.float32)
    x = np.random.default_rng(1).standard_normal((2, W))
    vkq.kv_write(cache, vkq.to_device(x, device=device), np.int64(3))
    vkq.kv_write(cache, x[:1], 10)  # float64 is converted to float32
    want = kv_write_reference(kv_write_reference(host, x, 3), x[:1], 10)
    same_bits(cache.numpy(), want)


def test_float16_rounding_matches_numpy(device):
    """Round to nearest even at every boundary: the largest half, the first value that
    overflows (65520 is a tie that rounds up to inf), subnormals and their ties, carries into
    the exponent, inf, NaN and signed zeros."""
    tiny = 2.0 ** -24
    special = [65504, 65519.99, 65520, 1e6, np.inf, np.nan, 0.0, -0.0,
               2.0 ** -14, 2.0 ** -14 * (1 - 2 ** -12), tiny, tiny / 2, tiny * 0.50001, tiny * 1.5,
               tiny * 2.5, tiny * 1023.5, tiny / 4, 1e-30, 1 + 2 ** -11, 1 + 3 * 2 ** -11,
               2047.9999, 1 - 2 ** -12, 0.1, 1 / 3]
    vals = np.array(special + [-v for v in special], np.float32)
    rng = np.random.default_rng(3)
    mags = np.exp2(rng.uniform(-30, 17, 4 * W * 4)).astype(np.float32)
    vals = np.concatenate([vals, mags * rng.choice([-1, 1], mags.size)])
    vals = np.resize(vals, (len(vals) // W + 1) * W).reshape(-1, W).astype(np.float32)
    cache = vkq.kv_cache(len(vals), W, np.float16, device=device)
    vkq.kv_write(cache, vals, 0)
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16)
    same_bits(cache.numpy(), want)


def test_graph_replays_write_at_the_parameter(device):
    """A decode loop: one recorded graph writes the row each replay's position names; the
    cache, captured by reference, keeps the rows of earlier replays."""
    cache = vkq.kv_cache(S, W, device=device)
    host = np.zeros((S, W), np.float32)
    with vkq.graph() as g:
        pos = g.param("pos")
        x = g.input("x", (2, W))
        assert vkq.kv_write(cache, x, pos) is cache
        g.output("y", vkq.add(x, x))  # a graph needs an output
    try:
        rng = np.random.default_rng(5)
        for p in (0, 2, 9, S - 2):
            x = rng.standard_normal((2, W)).astype(np.float32)
            g(x=x, pos=p)
            host = kv_write_reference(host, x, p)
            same_bits(cache.numpy(), host)
        with pytest.raises(GraphError, match=r"must be in \[0, 23\), got 23"):
            g(x=x, pos=S - 1)
    finally:
        g.close()


def test_errors(device):
    cache = vkq.kv_cache(S, W, device=device)
    x = np.zeros((2, W), np.float32)
    with pytest.raises(IndexError, match=r"positions \[23, 25\) are out of a cache"):
        vkq.kv_write(cache, x, S - 1)
    with pytest.raises(IndexError, match=r"positions \[-1, "):
        vkq.kv_write(cache, x, -1)
    with pytest.raises(ValueError, match="x rows have 8 values, the cache's 16"):
        vkq.kv_write(cache, np.zeros((1, 8), np.float32), 0)
    with pytest.raises(ValueError, match="25 rows do not fit a cache of 24 rows"):
        vkq.kv_write(cache, np.zeros((S + 1, W), np.float32), 0)
    with pytest.raises(TypeError, match=r"x must be a dense float32 \[T, width\]"):
        vkq.kv_write(cache, np.zeros(W, np.float32), 0)
    with pytest.raises(TypeError, match="pos must be an integer or a graph parameter"):
        vkq.kv_write(cache, x, 1.0)
    with pytest.raises(TypeError, match="updates 'cache' in place: pass a vkq.DeviceTensor"):
        vkq.kv_write(np.zeros((S, W), np.float32), x, 0)
    with pytest.raises(TypeError, match="cache must be a dense float32 or float16"):
        vkq.kv_write(vkq.to_device(np.zeros((S, W), np.int32), device=device), x, 0)
    with pytest.raises(ValueError, match="even width"):
        vkq.kv_write(vkq.kv_cache(S, 3, np.float16, device=device), np.zeros((1, 3), np.float32), 0)
    with pytest.raises(TypeError, match="float32 or float16, got int8"):
        vkq.kv_cache(S, W, np.int8, device=device)
    with pytest.raises(ValueError, match="max_seq must be an integer > 0"):
        vkq.kv_cache(0, W, device=device)
    with pytest.raises(GraphError, match="updates 'cache' in place: inside a graph"):
        with vkq.graph() as g:
            v = g.input("c", (S, W))
            vkq.kv_write(v, g.input("x", (1, W)), 0)
    with pytest.raises(GraphError, match="host array"):
        with vkq.graph() as g:
            vkq.kv_write(np.zeros((S, W), np.float32), g.input("x", (1, W)), 0)
    with pytest.raises(ValueError, match="25 rows do not fit"):
        with vkq.graph() as g:
            vkq.kv_write(cache, g.input("x", (S + 1, W)), g.param("pos"))
