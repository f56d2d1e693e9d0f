"""qta8a_qga4w linear (vkq.linear(x, w4, act_quant="int8")): the quantize pass against the
layout packer, the integer sums exactly, the float results within the epilogue's bound, every
kernel and variant, NaN/Inf rows, routing, device tensors, graphs, bad input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vkq
from vkq import layouts
from vkq.execute import run_op
from vkq.layouts import LayoutError
from vkq.ops import contract
from vkq.ops import qta8a_qga4w_linear as op
from vkq.ops.common import float_tensor
from vkq.ops.q4gsw_linear import prepack_q4gsw
from vkq.reference import silu_mul_reference
from vkq.reference.per_token import quantize_per_token_reference
from vkq.reference.qta8a_qga4w import (qta8a_error_bound, qta8a_group_accumulators,
                                       qta8a_qga4w_linear_reference)

INT8_PATHS = ("gemv", "gemm")


def make_weight(n: int, k: int, gs: int, symmetric: bool, seed: int,
                param_dtype: str = "auto") -> vkq.QuantizedWeight:
    rng = np.random.default_rng(seed)
    return vkq.quantize_weight(rng.standard_normal((n, k)), bits=4, group_size=gs,
                               symmetric=symmetric, param_dtype=param_dtype)


def device_weight(w: vkq.QuantizedWeight, device, param_dtype: str):
    """w's device copy with scales/zeros stored as `param_dtype` ("float16" or "float32")."""
    n, k = w.shape
    return prepack_q4gsw(layouts.pack_int4_weight(w.q),
                         layouts.pack_group_params(w.scales, w.zeros, w.group_size, k), device,
                         param_dtype=param_dtype)


def run(x, w, bias=None, device=None, **attrs):
    """The op with forced attributes (kernel, int_dot, subgroup, gemm_tile)."""
    has_bias = bias is not None
    out = run_op(op.Qta8aQga4wLinear.name, {"x": float_tensor("x", x)},
                 dict(attrs, has_bias=has_bias), weight=w,
                 constants={"bias": None if bias is None else np.asarray(bias, np.float32)},
                 device=device)
    return out["y"]


def check(y: np.ndarray, x: np.ndarray, w: vkq.QuantizedWeight, bias) -> None:
    """Within the float epilogue's bound of the reference; NaN exactly where it is NaN."""
    args = (x, w.q, w.scales, w.zeros, w.group_size, bias)
    ref = qta8a_qga4w_linear_reference(*args)
    assert y.dtype == np.float32 and y.shape == ref.shape
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(y), nan)
    err = np.abs(y[~nan] - ref[~nan])
    tol = qta8a_error_bound(*args)[~nan]
    assert np.all(err <= tol), f"max err/tol {np.max(err / tol):.3g}"


# -- the reference ---------------------------------------------------------------------------------
def test_reference_group_accumulators_and_float_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 48)).astype(np.float32)
    w = make_weight(5, 48, 16, False, 1)
    xq, s, z = quantize_per_token_reference(x)
    acc = qta8a_group_accumulators(xq, z, w.q, 16)
    direct = np.array([[[int(np.dot(xq[m, g * 16:(g + 1) * 16].astype(int) - z[m],
                                    w.q[n, g * 16:(g + 1) * 16].astype(int)))
                         for g in range(3)] for n in range(5)] for m in range(3)])
    np.testing.assert_array_equal(acc, direct)
    # the reference equals dequantized activations times dequantized weights
    xd = (xq.astype(np.float64) - z[:, None]) * s[:, None]
    np.testing.assert_allclose(qta8a_qga4w_linear_reference(x, w.q, w.scales, w.zeros, 16),
                               xd @ w.dequantize().astype(np.float64).T, rtol=1e-12, atol=1e-12)


# -- the quantize pass -----------------------------------------------------------------------------
@pytest.mark.parametrize("k,skew", [(8, 0), (40, 0), (64, 3), (264, -4), (1000, 0)])
def test_quantize_pass_writes_the_octet_layout(device, k, skew):
    """Values, octet sums and parameters bit for bit vkq.layouts.pack_int8_token_octets of the
    per-token reference, padding zero, NaN/Inf rows zero with scale NaN."""
    rng = np.random.default_rng(k)
    m = 6
    x = (rng.standard_normal((m, k)) * 10.0 ** rng.uniform(-5, 5, (m, 1))).astype(np.float32)
    x[1], x[2, 3], x[4] = 0.0, np.nan, 2.5
    want = layouts.pack_int8_token_octets(*quantize_per_token_reference(x))
    d = op.quantize_dispatch(device, m, k)
    if skew:
        d = dataclasses.replace(d, spec={"DIV_SKEW": skew})
    sizes = layouts.packed_nbytes(layouts.INT8_TOKEN_OCTETS, (m, k))
    with device.batch() as b:
        bufs = {"x": device.upload(x)}
        bufs.update({role: device.buffer(sizes[name]) for name, role in op.SCRATCH.items()})
        contract.get(op.Qta8aQga4wLinear.name).record(b, bufs, contract.Plan([d], {}))
        downloads = {name: b.download(bufs[role]) for name, role in op.SCRATCH.items()}
    for name, arr in want.arrays.items():
        got = downloads[name].result().view(arr.dtype).reshape(arr.shape)
        np.testing.assert_array_equal(got, arr, err_msg=name)
    for buf in bufs.values():
        buf.close()


# -- exact integer sums ----------------------------------------------------------------------------
def exact_case(m: int, n: int, k: int, gs: int, symmetric: bool, seed: int):
    """Activations and weights whose float epilogue is exact: every row's scale is 2^-3 (its
    values span (q - zp) / 8 for q in [-128, 127] with a chosen zp), weight scales are powers
    of two, zeros multiples of 1/4, so with K <= 264 every partial sum is a float32 number
    and any kernel must return the reference exactly: an integer sum that is off by one
    shows up as a difference of s_x * scale."""
    rng = np.random.default_rng(seed)
    zp = rng.integers(-128, 128, m)
    q = rng.integers(-128, 128, (m, k))
    q[:, 0], q[:, -1] = -128, 127
    x = ((q - zp[:, None]) * 0.125).astype(np.float32)
    xq, s, z = quantize_per_token_reference(x)
    assert np.all(s == 0.125) and np.array_equal(z, zp) and np.array_equal(xq, q)
    g = k // gs
    scales = (2.0 ** rng.integers(-1, 2, (n, g))).astype(np.float32)
    zeros = None if symmetric else (rng.integers(-8, 9, (n, g)) * 0.25).astype(np.float32)
    w = vkq.QuantizedWeight(rng.integers(-8, 8, (n, k)).astype(np.int8), scales, zeros, bits=4,
                            group_size=gs)
    bias = (rng.integers(-128, 128, n) / 32).astype(np.float32)
    return x, w, bias


@pytest.mark.parametrize("gs,k", [(8, 40), (16, 48), (24, 264), (32, 256), (64, 192), (128, 256),
                                  (256, 256)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_integer_sums_are_exact(device, gs, k, symmetric):
    """Both kernels, one and several rows (GEMV shapes with 1 and 4 rows of x); float32
    parameters and the int32 fallback on some group sizes only (each combination is a
    pipeline to build, seconds each on lavapipe)."""
    x, w, bias = exact_case(7, 19, k, gs, symmetric, seed=gs + k + symmetric)
    ref = qta8a_qga4w_linear_reference(x, w.q, w.scales, w.zeros, gs, bias).astype(np.float32)
    pw = device_weight(w, device, "float32" if gs == 256 else "float16")
    int_dots = {bool(device.caps.integer_dot_product)} | ({False} if gs in (16, 32) else set())
    for kernel in INT8_PATHS:
        for int_dot in int_dots:
            for m in (1, 7):
                y = run(x[:m], pw, bias, device, kernel=kernel, int_dot=int_dot)
                np.testing.assert_array_equal(y, ref[:m], err_msg=f"{kernel} int_dot={int_dot}")
    pw.close()


# -- float results ---------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 24, 25, 33, 70])
def test_both_kernels_match_the_reference_for_every_m(device, m):
    rng = np.random.default_rng(m)
    w = make_weight(37, 96, 32, symmetric=m % 2 == 0, seed=m)
    x = rng.standard_normal((m, 96)).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    for kernel in INT8_PATHS:
        check(vkq.linear(x, w, bias, act_quant="int8", kernel=kernel, device=device), x, w, bias)
    w.release()


@pytest.mark.parametrize("gs,k", [(8, 8), (8, 40), (16, 272), (24, 264), (32, 32), (32, 4096),
                                  (64, 320), (128, 4096)])
def test_group_sizes_and_k_tails(device, gs, k):
    """Every group size (8 .. K), K % 32 != 0 (padding components), odd N."""
    rng = np.random.default_rng(gs * k)
    x = rng.standard_normal((3, k)).astype(np.float32)
    for symmetric in (True, False):
        w = make_weight(13, k, gs, symmetric, seed=k)
        for kernel in INT8_PATHS:
            check(vkq.linear(x, w, act_quant="int8", kernel=kernel, device=device), x, w, None)
            check(vkq.linear(x[:1], w, act_quant="int8", kernel=kernel, device=device), x[:1], w, None)
        w.release()


def test_float32_parameters(device):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    for symmetric in (True, False):
        w = make_weight(21, 128, 32, symmetric, seed=4, param_dtype="float32")
        pw = device_weight(w, device, "float32")
        assert not pw.half_params
        for kernel in INT8_PATHS:
            check(vkq.linear(x, pw, act_quant="int8", kernel=kernel, device=device), x, w, None)
        pw.close()


def test_leading_dims_and_one_dimensional_x(device):
    rng = np.random.default_rng(8)
    w = make_weight(9, 64, 16, True, seed=8)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = vkq.linear(x, w, act_quant="int8", kernel="gemm", device=device)
    assert y.shape == (2, 3, 9)
    check(y, x, w, None)
    y1 = vkq.linear(x[0, 0], w, act_quant="int8", kernel="gemv", device=device)
    assert y1.shape == (9,)
    check(y1, x[0, 0], w, None)


# -- variants --------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric,gs", [(True, 32), (False, 16)])
def test_int_dot_and_fallback_are_identical(device, symmetric, gs):
    if not device.caps.integer_dot_product:
        pytest.skip("the device has no integer dot product")
    rng = np.random.default_rng(gs)
    w = make_weight(45, 160, gs, symmetric, seed=gs)
    for m in (1, 2, 7, 40):
        x = rng.standard_normal((m, 160)).astype(np.float32)
        for kernel in INT8_PATHS:
            with vkq.trace() as t:
                a = run(x, w, None, device, kernel=kernel, int_dot=True)
                b = run(x, w, None, device, kernel=kernel, int_dot=False)
            assert "_idot_" in t.kernels[1] and "_fallback_" in t.kernels[3]
            np.testing.assert_array_equal(a, b)
    w.release()


def test_gemm_tiles_are_identical_and_gemv_reductions_agree(device):
    """Each GEMM output is one thread's sum over the groups in order, whatever the tile; the
    GEMV's two reductions sum lanes in different orders (both within the bound)."""
    rng = np.random.default_rng(9)
    w = make_weight(70, 192, 64, False, seed=9)
    x = rng.standard_normal((37, 192)).astype(np.float32)
    ys = []
    for tile in ("32x64", "64x64", "128x64"):
        with vkq.trace() as t:
            ys.append(run(x, w, None, device, kernel="gemm", gemm_tile=tile))
        assert t.kernels[1].endswith(f"_{tile}_p16")
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])
    if device.caps.subgroup_arithmetic:
        for m in (1, 3):
            with vkq.trace() as t:
                y = run(x[:m], w, None, device, kernel="gemv", subgroup=False)
            assert t.kernels[1].endswith("_smem_p16")
            check(y, x[:m], w, None)
    w.release()


# -- special rows ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", INT8_PATHS)
def test_constant_zero_and_non_finite_rows(device, kernel):
    """Zero rows give the bias exactly, constant rows their reference; a row with NaN or
    +-Inf gives NaN in that row only (its scale is NaN), as does a row whose range
    overflows float32 (scale inf, values all at the zero point: inf * 0)."""
    rng = np.random.default_rng(2)
    k = 64
    x = rng.standard_normal((8, k)).astype(np.float32)
    x[0], x[1], x[2] = 0.0, 3.0, -1e-3
    x[3, 5], x[4, 0], x[5, 63] = np.nan, np.inf, -np.inf
    x[6, 0], x[6, 1] = -3e38, 3e38
    bias = rng.standard_normal(11).astype(np.float32)
    w = make_weight(11, k, 32, False, seed=2)
    y = vkq.linear(x, w, bias, act_quant="int8", kernel=kernel, device=device)
    check(y, x, w, bias)
    np.testing.assert_array_equal(y[0], bias)
    assert np.all(np.isnan(y[3:7])) and np.all(np.isfinite(y[[0, 1, 2, 7]]))
    w.release()


# -- routing, device tensors, graphs ---------------------------------------------------------------
def test_auto_routing(device, monkeypatch):
    rng = np.random.default_rng(5)
    w = make_weight(33, 128, 32, True, seed=5)
    pw = contract.get(op.Qta8aQga4wLinear.name).prepack(w, device)
    x = rng.standard_normal((40, 128)).astype(np.float32)
    # M <= WEIGHT_ONLY_MAX_ROWS: the weight-only path on the float x (no quantization)
    with vkq.trace() as t:
        y1 = vkq.linear(x[:1], w, act_quant="int8", device=device)
    assert len(t.kernels) == 1 and t.kernels[0].startswith("q4gsw_gemv_")
    np.testing.assert_array_equal(y1, vkq.linear(x[:1], w, device=device))
    caps = device.caps
    cases = ((2, "gemv"), (op.GEMV_MAX_ROWS, "gemv"), (op.GEMV_MAX_ROWS + 1, "gemm"), (40, "gemm"))
    for m, path in cases:
        with vkq.trace() as t:
            y = vkq.linear(x[:m], w, act_quant="int8", device=device)
        pick = op.gemv_variant(pw, m, caps) if path == "gemv" else op.gemm_variant(pw, m, caps)
        assert t.kernels == [op.quantize_variant(caps), pick]
        check(y, x[:m], w, None)
    # with the prior off, M = 1 quantizes too (x of another shape: plans are cached per shape)
    monkeypatch.setattr(op, "WEIGHT_ONLY_MAX_ROWS", 0)
    with vkq.trace() as t:
        y = vkq.linear(x[None, :1], w, act_quant="int8", device=device)
    assert t.kernels == [op.quantize_variant(caps), op.gemv_variant(pw, 1, caps)]
    check(y, x[None, :1], w, None)
    assert len(w._packed) == 1  # one device copy serves both paths
    w.release()


def test_plans_of_the_two_ops_sharing_a_weight_stay_apart(device):
    """q4gsw_linear and qta8a_qga4w_linear plan on the same prepacked weight with the same
    attributes: each must get its own plan (eager plans are cached on the weight)."""
    w = make_weight(16, 64, 32, True, seed=3)
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    attrs = {"kernel": "gemm", "has_bias": False}
    for name in ("q4gsw_linear", op.Qta8aQga4wLinear.name):
        with vkq.trace() as t:
            run_op(name, {"x": float_tensor("x", x)}, attrs, weight=w, device=device)
        assert t.kernels[0].startswith("q4gsw_gemm" if name == "q4gsw_linear" else "qta8a_quantize")
    w.release()


def test_device_tensors_and_graphs(device):
    rng = np.random.default_rng(6)
    w = make_weight(24, 96, 32, False, seed=6)
    bias = rng.standard_normal(24).astype(np.float32)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    want = vkq.linear(x, w, bias, act_quant="int8", device=device)
    yd = vkq.linear(vkq.to_device(x, device=device), w, bias, act_quant="int8")
    assert isinstance(yd, vkq.DeviceTensor)
    np.testing.assert_array_equal(yd.numpy(), want)
    with vkq.graph(device) as g:
        xv = g.input("x", (4, 96))
        g.output("y", vkq.linear(xv, w, bias, act_quant="int8"))
    assert g.n_dispatches == 2 and g.kernel_names[0] == op.quantize_variant(device.caps)
    for _ in range(2):
        x = rng.standard_normal((4, 96)).astype(np.float32)
        np.testing.assert_array_equal(g(x=x)["y"], vkq.linear(x, w, bias, act_quant="int8",
                                                              device=device))
    g.close()
    w.release()


# -- rms_norm, residual and fused weights around the int8 kernels ---------------------------------
# (kernel, M): the weight-only GEMV (M = 1, everything in its kernel), the int8 GEMV and GEMM
# with the norm and epilogues as dispatches of their own.
AROUND = [("auto", 1), ("gemv", 3), ("gemm", 5), ("auto", 30)]


def _x(m: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)


@pytest.mark.parametrize("kernel,m", AROUND)
def test_rms_norm_and_residual(device, kernel, m):
    """act_quant with rms_norm= quantizes rms_norm(x) (the rms_norm op's bits), and residual=
    adds in float32: the same bits as the separate calls."""
    w = make_weight(40, 96, 32, False, seed=8)
    x, r = _x(m, 96, m), _x(m, 40, m + 1)
    nw = np.linspace(0.5, 1.5, 96).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.linear(x, w, rms_norm=(nw, 1e-5), residual=r, act_quant="int8", kernel=kernel,
                       device=device)
    if kernel == "auto" and m == 1:  # the weight-only path: the q4gsw GEMV with both folded in
        want = vkq.linear(x, w, rms_norm=(nw, 1e-5), residual=r, device=device)
        assert t.kernels == [t.kernels[0]] and "q4gsw_gemv" in t.kernels[0]
    else:
        xn = vkq.rms_norm(x, nw, 1e-5, device=device)
        want = vkq.linear(xn, w, act_quant="int8", kernel=kernel, device=device) + r
        assert t.kernels[1] == op.quantize_variant(device.caps) and "add_f32" in t.kernels[-1], t.kernels
    np.testing.assert_array_equal(y, want)
    w.release()


@pytest.mark.parametrize("kernel,m", AROUND)
def test_fused_parts_and_silu_mul(device, kernel, m):
    """q/k/v parts are the separate weights' results; gate/up with silu_mul is silu(gate) * up
    of them (float32 silu: a few ulps)."""
    ws = [make_weight(n, 64, 32, True, seed=20 + n) for n in (48, 16, 16)]
    x = _x(m, 64, 2 * m)
    got = vkq.linear(x, vkq.fuse_linear(ws), act_quant="int8", kernel=kernel, device=device)
    for part, w in zip(got, ws):
        np.testing.assert_array_equal(part, vkq.linear(x, w, act_quant="int8", kernel=kernel,
                                                       device=device))
    g, u = make_weight(40, 64, 32, False, seed=31), make_weight(40, 64, 32, False, seed=32)
    bias = np.linspace(-1, 1, 80).astype(np.float32)  # [b_gate, b_up]
    y = vkq.linear(x, vkq.fuse_linear([g, u], epilogue="silu_mul"), bias, act_quant="int8",
                   kernel=kernel, device=device)
    gate = vkq.linear(x, g, bias[:40], act_quant="int8", kernel=kernel, device=device)
    up = vkq.linear(x, u, bias[40:], act_quant="int8", kernel=kernel, device=device)
    want = silu_mul_reference(gate, up)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    for w in ws + [g, u]:
        w.release()


def test_norm_and_epilogues_in_a_graph(device):
    w = make_weight(32, 64, 32, False, seed=40)
    nw = np.linspace(0.5, 1.5, 64).astype(np.float32)
    with vkq.graph(device) as gr:
        xv, rv = gr.input("x", (3, 64)), gr.input("r", (3, 32))
        gr.output("y", vkq.linear(xv, w, rms_norm=(nw, 1e-5), residual=rv, act_quant="int8"))
    try:
        for seed in range(2):
            x, r = _x(3, 64, seed), _x(3, 32, seed + 5)
            np.testing.assert_array_equal(
                gr(x=x, r=r)["y"],
                vkq.linear(x, w, rms_norm=(nw, 1e-5), residual=r, act_quant="int8", device=device))
    finally:
        gr.close()
        w.release()


def test_empty_batch(device):
    w = make_weight(8, 32, 32, True, seed=0)
    assert vkq.linear(np.zeros((0, 32), np.float32), w, act_quant="int8", device=device).shape == (0, 8)


# -- bad input -------------------------------------------------------------------------------------
def test_bad_inputs(device):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 32)).astype(np.float32)
    w4 = vkq.quantize_weight(W, bits=4, group_size=32)
    w8 = vkq.quantize_weight(W, bits=8)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="act_quant must be None or 'int8'"):
        vkq.linear(x, w4, act_quant="int4", device=device)
    with pytest.raises(TypeError, match="act_quant='int8' quantizes float activations for int4"):
        vkq.linear(x, w8, act_quant="int8", device=device)
    with pytest.raises(ValueError, match=r"residual must have shape \(2, 8\)"):
        vkq.linear(x, w4, residual=np.zeros((2, 9), np.float32), act_quant="int8", device=device)
    with pytest.raises(ValueError, match="residual= applies to a plain linear"):
        vkq.linear(x, vkq.fuse_linear([w4, w4]), residual=np.zeros((2, 16), np.float32),
                   act_quant="int8", device=device)
    with pytest.raises(ValueError, match=r"rms_norm weight must have shape \(32,\)"):
        vkq.linear(x, w4, rms_norm=(np.ones(31, np.float32), 1e-5), act_quant="int8", device=device)
    with pytest.raises(TypeError, match="input_scale must not be given"):
        vkq.linear(x, w4, input_scale=0.5, act_quant="int8", device=device)
    with pytest.raises(ValueError, match="no fused activation"):
        vkq.linear(x, w4, activation="relu", act_quant="int8", device=device)
    with pytest.raises(ValueError, match="K = 32"):
        vkq.linear(x[:, :16], w4, act_quant="int8", device=device)
    with pytest.raises(TypeError, match="float"):
        vkq.linear(x.astype(np.int8), w4, act_quant="int8", device=device)
    with pytest.raises(LayoutError, match="float32 activations"):
        vkq.linear(vkq.to_device(x.astype(np.int8), layout="int8_4w", device=device), w4,
                   act_quant="int8")
    with pytest.raises(ValueError, match="kernel must be"):
        vkq.linear(x, w4, act_quant="int8", kernel="fast", device=device)
