"""Per-token int8 quantization (vkq.quantize_per_token / vkq.dequantize_per_token): the numpy
reference against PyTorch's quantized_decomposed ops, and the kernels against the reference,
bit for bit (scales, zero points and int8 values; dequantized floats)."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.execute import run_op
from vkq.ops.common import float_tensor
from vkq.reference.per_token import (dequantize_per_token_reference, quantize_per_token_reference,
                                     quantize_with)

F32_MAX = np.finfo(np.float32).max


def edge_rows(k: int) -> np.ndarray:
    """Rows that stress the parameter math: constant, all-zero, one-signed, grids of half
    steps whose range is exactly 255 * 2^e (scale a power of two: x / scale has exact .5
    ties, rounded to even), huge
    (the range overflows to inf: scale inf), tiny (scale clamped to eps), and -0.0."""
    rng = np.random.default_rng(k)
    rows = [np.zeros(k), np.full(k, 3.25), np.full(k, -7.0), np.full(k, 1e-30),
            np.abs(rng.standard_normal(k)) + 1, -np.abs(rng.standard_normal(k)) - 1,
            rng.integers(-200, 311, k) * 2.0 ** -4, rng.integers(-510, 1, k) * 0.25,
            np.linspace(-1, 1, k) * F32_MAX, np.full(k, F32_MAX), rng.standard_normal(k) * 1e-20,
            np.full(k, -0.0), rng.standard_normal(k) * 1e30, rng.uniform(-1, 1, k) * 2.0 ** -126]
    out = np.array(rows, dtype=np.float32)
    out[6, 0], out[6, -1] = -100 / 8, 155 / 8  # the grid's ends: range 255 / 8 exactly
    out[7, 0], out[7, -1] = -127.5, 0.0
    return out


def random_rows(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """Rows of different magnitudes (10^-8 .. 10^8) and centres."""
    mag = 10.0 ** rng.uniform(-8, 8, (m, 1))
    shift = rng.standard_normal((m, 1)) * rng.choice([0, 1, 5], (m, 1))
    return ((rng.standard_normal((m, k)) + shift) * mag).astype(np.float32)


def assert_same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """Identical bits, except that a NaN matches any NaN (GPUs write their own NaN: the H200
    0x7fffffff where numpy's 0 * inf gives 0xffc00000)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(np.ascontiguousarray(np.where(nan, 0, a)).view(np.uint8),
                                  np.ascontiguousarray(np.where(nan, 0, b)).view(np.uint8))


def check_quantized(x: np.ndarray, out: tuple) -> None:
    xq, s, z = out
    rq, rs, rz = quantize_per_token_reference(x)
    assert xq.dtype == np.int8 and s.dtype == np.float32 and z.dtype == np.int32
    assert_same_bits(s, rs)
    assert_same_bits(z, rz)
    assert_same_bits(xq, rq)


# -- the reference is PyTorch's math --------------------------------------------------------------
def torch_quantize(x: np.ndarray):
    torch = pytest.importorskip("torch")
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops)
    ops = torch.ops.quantized_decomposed
    t = torch.from_numpy(x)
    s, z = ops.choose_qparams_per_token_asymmetric(t, torch.int8)
    s32, z32 = s.to(torch.float32), z.to(torch.int32)
    q = ops.quantize_per_token(t, s32, z32, -128, 127, torch.int8)
    d = ops.dequantize_per_token(q, s32, z32, -128, 127, torch.int8, torch.float32)
    return q.numpy(), s32.numpy()[..., 0], z32.numpy()[..., 0], d.numpy()


@pytest.mark.parametrize("k", [1, 7, 64, 301])
def test_reference_is_pytorchs_quantization(k):
    rng = np.random.default_rng(k)
    x = np.concatenate([random_rows(rng, 200, k), edge_rows(k)])
    q, s, z, d = torch_quantize(x)
    rq, rs, rz = quantize_per_token_reference(x)
    assert_same_bits(rs, s)
    assert_same_bits(rz, z)
    assert_same_bits(rq, q)
    finite = np.isfinite(s)  # scale inf rows: PyTorch computes 0 * inf = NaN, and so do we
    assert_same_bits(dequantize_per_token_reference(rq, rs, rz)[finite], d[finite])


def test_reference_edge_cases():
    x = np.array([[0, 0, 0], [2, 2, 2], [-1, 0, 1], [np.nan, 1, 2], [1, np.inf, 0]], np.float32)
    q, s, z = quantize_per_token_reference(x)
    eps = np.finfo(np.float32).eps
    assert s[0] == eps and z[0] == 127 and np.all(q[0] == 127)   # PyTorch's choice for zeros
    assert s[1] == np.float32(2) / np.float32(255) and z[1] == -128 and np.all(q[1] == 127)
    assert np.isnan(s[3]) and np.isnan(s[4]) and z[3] == z[4] == 0 and not q[3:].any()
    y = dequantize_per_token_reference(q, s, z)
    assert np.all(np.isnan(y[3:])) and np.all(np.isfinite(y[:3]))
    assert quantize_with(x[:1], s[:1], z[:1]).dtype == np.int8


# -- the kernels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (5, 7), (2, 3, 16), (7,), (4, 1000), (9, 4097),
                                   (300, 12)])
def test_quantize_matches_reference_bit_for_bit(device, shape):
    rng = np.random.default_rng(sum(shape))
    x = random_rows(rng, int(np.prod(shape[:-1])), shape[-1]).reshape(shape)
    with vkq.trace() as t:
        out = vkq.quantize_per_token(x, device=device)
    check_quantized(x, out)
    assert len(t.kernels) == (1 if shape[-1] % 4 == 0 else 2)
    y = vkq.dequantize_per_token(*out, device=device)
    assert_same_bits(y, dequantize_per_token_reference(*out))


@pytest.mark.parametrize("k", [1, 6, 8, 33, 256])
def test_edge_rows_bit_for_bit(device, k):
    x = edge_rows(k)
    out = vkq.quantize_per_token(x, device=device)
    check_quantized(x, out)
    if k > 1:  # row 8 spans -FLT_MAX .. FLT_MAX: the range overflows, the scale is inf
        assert np.isinf(out[1][8]) and np.all(out[0][8] == out[2][8])
    assert_same_bits(vkq.dequantize_per_token(*out, device=device),
                     dequantize_per_token_reference(*out))


@pytest.mark.parametrize("k", [5, 8])
def test_nan_and_inf_rows_stay_in_their_row(device, k):
    rng = np.random.default_rng(3)
    x = random_rows(rng, 6, k)
    x[1, 2], x[3, 0], x[4, k - 1] = np.nan, np.inf, -np.inf
    xq, s, z = vkq.quantize_per_token(x, device=device)
    check_quantized(x, (xq, s, z))
    bad = np.array([False, True, False, True, True, False])
    assert np.all(np.isnan(s[bad])) and not z[bad].any() and not xq[bad].any()
    assert np.all(np.isfinite(s[~bad]))
    y = vkq.dequantize_per_token(xq, s, z, device=device)
    assert np.all(np.isnan(y[bad])) and np.all(np.isfinite(y[~bad]))
    check_quantized(x[~bad], (xq[~bad], s[~bad], z[~bad]))  # the others as if alone


@pytest.mark.parametrize("skew", [-4, -3, -1, 1, 3, 4])
def test_quantize_is_exact_when_the_hardware_division_is_off(device, skew):
    """lavapipe divides exactly; NVIDIA's `/` may be 2.5 ulp off. Offsetting the kernels'
    first estimate by up to 4 ulps must not change a single bit (the correction works)."""
    rng = np.random.default_rng(abs(skew))
    x = np.concatenate([random_rows(rng, 120, 40), edge_rows(40)])
    for k in (40, 38):  # the one-pass kernel, and the second pass for K % 4 != 0
        xs = np.ascontiguousarray(x[:, :k])
        out = run_op("quantize_per_token", {"x": float_tensor("x", xs)}, {"div_skew": skew},
                     device=device)
        check_quantized(xs, (out["xq"], out["scales"], out["zero_points"]))


def divide(device, a: np.ndarray, b: np.ndarray, skew: int = 0) -> np.ndarray:
    """div_rn(a, b) on the device (the test-only per_token_divide kernel)."""
    kern = device.kernel("per_token_divide", **({"DIV_SKEW": skew} if skew else {}))
    count = a.size
    with device.buffer(4 * count) as out, device.batch() as batch:
        ba, bb = device.upload(a.astype(np.float32)), device.upload(b.astype(np.float32))
        batch.dispatch(kern, (-(-count // 256), 1, 1), buffers={"t_out": out, "t_a": ba, "t_b": bb},
                       push={"count": count})
        d = batch.download(out)
        batch.keep(ba)
        batch.keep(bb)
    return d.result().view(np.float32)


def division_cases() -> tuple[np.ndarray, np.ndarray]:
    """Random quotients over the whole normal range, and the quantizer's own: range / 255,
    lo / scale and hi / scale (|.| <= 255), 1 / scale; mantissas all ones, powers of two."""
    rng = np.random.default_rng(11)
    n = 20000

    def floats(lo: int, hi: int, size: int) -> np.ndarray:
        return (rng.uniform(1, 2, size) * 2.0 ** rng.integers(lo, hi, size)).astype(np.float32)

    a, b = [floats(-80, 126, n)], [floats(-60, 60, n)]
    scales = np.concatenate([floats(-23, 120, n), 2.0 ** np.arange(-23, 120, dtype=np.float32)])
    a.append(floats(-80, 127, n)), b.append(np.full(n, 255, np.float32))
    a.append(np.ones(scales.size, np.float32)), b.append(scales)
    a.append((rng.uniform(0, 255, scales.size) * scales).astype(np.float32)), b.append(scales)
    ones = np.float32(2 - 2.0 ** -23) * 2.0 ** rng.integers(-40, 40, 1000).astype(np.float32)
    a.append(ones), b.append(np.roll(ones, 1))
    a.append(np.float32(3) * 2.0 ** rng.integers(-40, 40, 1000).astype(np.float32))
    b.append(np.float32(3) * np.ones(1000, np.float32))
    return np.concatenate(a), np.concatenate(b)


@pytest.mark.parametrize("skew", [0, -4, -2, 1, 3, 4])
def test_correctly_rounded_division(device, skew):
    a, b = division_cases()
    with np.errstate(over="ignore"):
        exact = a / b  # numpy: IEEE float32 division, correctly rounded
    q = divide(device, a, b, skew)
    # div_rn's promise: normal a, b whose exponents differ by -124 .. 126 (a normal quotient)
    tiny = np.finfo(np.float32).tiny
    diff = np.frexp(a)[1] - np.frexp(b)[1]
    in_range = (a >= tiny) & (b >= tiny) & (diff >= -124) & (diff <= 126)
    assert in_range.mean() > 0.95
    assert_same_bits(q[in_range], exact[in_range])


# -- device tensors, graphs, empty batches ----------------------------------------------------------
def test_device_tensors_in_and_out(device):
    rng = np.random.default_rng(5)
    x = random_rows(rng, 6, 24).reshape(2, 3, 24)
    xd = vkq.to_device(x, device=device)
    xq, s, z = vkq.quantize_per_token(xd)
    assert all(isinstance(t, vkq.DeviceTensor) for t in (xq, s, z))
    assert xq.shape == (2, 3, 24) and s.shape == z.shape == (2, 3)
    yd = vkq.dequantize_per_token(xq, s, z)
    check_quantized(x, (xq.numpy(), s.numpy(), z.numpy()))
    assert_same_bits(yd.numpy(), dequantize_per_token_reference(xq.numpy(), s.numpy(), z.numpy()))
    # int8 data uploaded by the user, with PyTorch-shaped [..., 1] parameters
    q_host, s_host, z_host = (t.numpy() for t in (xq, s, z))
    y2 = vkq.dequantize_per_token(vkq.to_device(q_host, device=device), s_host[..., None],
                                  z_host[..., None].astype(np.int64))
    assert_same_bits(y2.numpy(), yd.numpy())


def test_graph_capture_and_replay(device):
    rng = np.random.default_rng(6)
    with vkq.graph(device) as g:
        x = g.input("x", (5, 13))
        xq, s, z = vkq.quantize_per_token(x)
        g.output("xq", xq)
        g.output("scales", s)
        g.output("zero_points", z)
        g.output("y", vkq.dequantize_per_token(xq, s, z))
    assert g.n_dispatches == 3  # two quantize passes (K % 4 != 0), one dequantize
    for _ in range(2):
        xv = random_rows(rng, 5, 13)
        out = g(x=xv)
        check_quantized(xv, (out["xq"], out["scales"], out["zero_points"]))
        assert_same_bits(out["y"], dequantize_per_token_reference(out["xq"], out["scales"],
                                                                  out["zero_points"]))
    g.close()


def test_empty_batch(device):
    xq, s, z = vkq.quantize_per_token(np.zeros((0, 8), np.float32), device=device)
    assert xq.shape == (0, 8) and s.shape == z.shape == (0,)
    assert vkq.dequantize_per_token(xq, s, z, device=device).shape == (0, 8)


# -- bad input --------------------------------------------------------------------------------------
def test_bad_inputs(device):
    x = np.ones((2, 8), np.float32)
    xq, s, z = vkq.quantize_per_token(x, device=device)
    with pytest.raises(TypeError, match="float"):
        vkq.quantize_per_token(np.ones((2, 8), np.int32), device=device)
    with pytest.raises(ValueError, match="non-empty last axis"):
        vkq.quantize_per_token(np.ones((2, 0), np.float32), device=device)
    with pytest.raises(TypeError, match="int8"):
        vkq.dequantize_per_token(xq.astype(np.int16), s, z, device=device)
    with pytest.raises(ValueError, match=r"scales must have shape \(2,\)"):
        vkq.dequantize_per_token(xq, s[:1], z, device=device)
    with pytest.raises(ValueError, match=r"zero_points must have shape \(2,\)"):
        vkq.dequantize_per_token(xq, s, np.zeros(3, np.int32), device=device)
    with pytest.raises(ValueError, match=r"\[-128, 127\]"):
        vkq.dequantize_per_token(xq, s, z + 300, device=device)
    with pytest.raises(TypeError, match="integer"):
        vkq.dequantize_per_token(xq, s, z.astype(np.float32), device=device)
    xd = vkq.to_device(x, device=device)
    with pytest.raises(TypeError, match="dense int8"):
        vkq.dequantize_per_token(xd, s, z)
    with pytest.raises(TypeError, match="dense float32"):
        vkq.quantize_per_token(vkq.to_device(xq, device=device))
