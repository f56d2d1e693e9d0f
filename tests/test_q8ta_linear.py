"""q8ta linear (int8 x int8 -> int8): GEMV and GEMM kernels against the numpy reference.

int8 results must equal the float32-mirroring reference exactly and stay within 1 LSB of the
float64 one; integer accumulators (ACC_OUT test mode) must equal numpy's exactly.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import vkq
from vkq import layouts
from vkq.layouts import LayoutError
from vkq.execute import run_op
from vkq.ops import contract
from vkq.ops import q8ta_linear as op
from vkq.reference.q8ta import (q8ta_accumulators, q8ta_linear_reference,
                                quantize_activation_int8)

def q8ta(x, w, bias=None, *, variant=None, device=None, kernel="auto", **qp):
    """vkq.linear for int8 weights, with a forced shader variant (`variant`) when given: the
    op's own call path (linear_call, then run_op)."""
    o = contract.get("q8ta_linear")
    call = o.linear_call(x, w, bias, dict(qp, kernel=kernel, device=device, variant=variant))
    if call.immediate is not None:
        return call.immediate
    return call.finish(run_op(o.name, call.inputs, call.attrs, weight=call.weight,
                              constants=call.constants, device=device))


GEMV_VARIANTS = sorted(op.path_variants(op.GEMV))
# the tensor-core GEMM variants run where the device has them: tests/test_coopmat.py
GEMM_VARIANTS = sorted(v for v in op.path_variants(op.GEMM) if not v.startswith(op.COOPMAT_FAMILY))
SENTINEL = 0x5A5A5A5A


def make_case(rng, m, n, k, *, bias=True, x_range=(-128, 127), w_range=(-128, 127),
              s_w=None):
    x = rng.integers(x_range[0], x_range[1] + 1, (m, k), dtype=np.int8)
    q = rng.integers(w_range[0], w_range[1] + 1, (n, k), dtype=np.int8)
    s_w = rng.uniform(0.002, 0.02, n).astype(np.float32) if s_w is None else s_w
    b = (rng.standard_normal(n) * 4).astype(np.float32) if bias else None
    return x, vkq.QuantizedWeight(q, s_w, bits=8), b


def qparams(s_x=0.05, zp_x=3, s_out=0.25, zp_out=-7, activation="none"):
    return dict(input_scale=s_x, input_zero_point=zp_x, output_scale=s_out,
                output_zero_point=zp_out, activation=activation)


def references(x, w, b, p):
    args = (x, w.q, w.scales, b, p["input_scale"], p["input_zero_point"], p["output_scale"],
            p["output_zero_point"], p["activation"])
    return q8ta_linear_reference(*args, math="float32"), q8ta_linear_reference(*args, math="float64")


def assert_matches(y, x, w, b, p):
    ref32, ref64 = references(x, w, b, p)
    assert y.dtype == np.int8 and y.shape == ref32.shape
    np.testing.assert_array_equal(y, ref32)
    assert np.abs(y.astype(np.int32) - ref64).max(initial=0) <= 1


# -- the numpy reference itself --------------------------------------------------------------


def test_reference_float32_and_float64_epilogues_agree_within_1_lsb():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, w, b = make_case(rng, 9, 31, 128)
        p = qparams(s_x=float(rng.uniform(0.001, 0.1)), zp_x=int(rng.integers(-128, 128)),
                    s_out=float(rng.uniform(0.01, 2.0)), zp_out=int(rng.integers(-128, 128)),
                    activation=str(rng.choice(["none", "relu"])))
        ref32, ref64 = references(x, w, b, p)
        assert np.abs(ref32.astype(int) - ref64).max() <= 1


def test_reference_accumulators_and_activation_quantizer():
    x = np.array([[1, -2, 3, -128]], np.int8)
    q = np.array([[127, 127, -127, 1], [0, 1, 0, 0]], np.int8)
    np.testing.assert_array_equal(q8ta_accumulators(x, q), [[127 - 254 - 381 - 128, -2]])
    xq = quantize_activation_int8(np.array([0.25, 0.75, -1e9, 1e9]), 0.5, 1)
    np.testing.assert_array_equal(xq, [1, 3, -128, 127])  # rint(0.5) = 0, rint(1.5) = 2


# -- results ---------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 17, 64])
def test_both_kernels_match_reference_for_every_m(device, m):
    rng = np.random.default_rng(m)
    n, k = (37, 260) if m < 64 else (70, 4096)
    x, w, b = make_case(rng, m, n, k)
    p = qparams()
    with vkq.trace() as t:
        y_gemv = vkq.linear(x, w, b, **p, kernel="gemv", device=device)
        y_gemm = vkq.linear(x, w, b, **p, kernel="gemm", device=device)
    assert t.kernels == [op.pick_variant("gemv", device.caps, m, n, k),
                         op.pick_variant("gemm", device.caps, m, n, k)]
    assert_matches(y_gemv, x, w, b, p)
    np.testing.assert_array_equal(y_gemv, y_gemm)


@pytest.mark.parametrize("k", [1, 3, 4, 5, 8, 12, 16, 28, 37, 60, 64, 68, 128, 252, 1027, 4096])
def test_k_range(device, k):
    """Any K: K % 4 != 0 is padded with zero columns by the packers (weights and x), which
    add 0 to every integer dot and leave wsum alone."""
    rng = np.random.default_rng(k)
    x, w, b = make_case(rng, 5, 13, k)
    p = qparams(s_out=0.02 * np.sqrt(k))
    assert_matches(vkq.linear(x[:1], w, b, **p, device=device), x[:1], w, b, p)
    assert_matches(vkq.linear(x, w, b, **p, device=device), x, w, b, p)


@pytest.mark.parametrize("variant", GEMV_VARIANTS + GEMM_VARIANTS)
def test_every_variant_gives_identical_results(device, variant):
    """int-dot and fallback variants (and both reductions / tile sizes) agree bit for bit."""
    rng = np.random.default_rng(7)
    path = op.GEMV if "gemv" in variant else op.GEMM
    for m, n, k in [(3, 45, 516), (70, 19, 36)] if path == op.GEMM else [(1, 45, 516), (2, 7, 36)]:
        x, w, b = make_case(rng, m, n, k)
        p = qparams(activation="relu")
        with vkq.trace() as t:
            y = q8ta(x, w, b, **p, kernel=path, device=device, variant=variant)
        assert t.kernels == [variant]
        assert_matches(y, x, w, b, p)


def _run_into(device, variant, x, w, p, bias=None, *, acc_out=False, extra_words=64):
    """Dispatch through the internal entry point into an output buffer larger than needed,
    pre-filled with a sentinel; returns (logical words, words past the end)."""
    path = op.GEMV if "gemv" in variant else op.GEMM
    m, _ = x.shape
    n = w.shape[0]
    weight = op.prepack(w, device)
    qp = op.QParams.check(p["input_scale"], p["input_zero_point"], p["output_scale"],
                          p["output_zero_point"], p["activation"])
    packed_x = op.pack_x(path, x)
    words = m * 4 * weight.n4 if acc_out else int(np.prod(op.output_spec(path, m, n)))
    with device.upload(packed_x.arrays["data"]) as bx, \
            device.upload(np.full(words + extra_words, SENTINEL, np.uint32)) as by:
        with device.batch() as batch:
            op.record(batch, variant, x=bx, out=by, weight=weight, epilogue=weight.epilogue(qp, bias),
                      m=m, qp=qp, acc_out=acc_out)
        got = by.read(np.int32)
    return got[:words], got[words:].view(np.uint32)


@pytest.mark.parametrize("variant", GEMV_VARIANTS + GEMM_VARIANTS)
def test_no_writes_past_the_output_and_padding_is_zero(device, variant):
    rng = np.random.default_rng(3)
    m = 1 if "gemv" in variant else 5  # M4 = 2 with 3 padding rows; N4 = 10 with 3 padding channels
    x, w, b = make_case(rng, m, 37, 44)
    p = qparams()
    words, tail = _run_into(device, variant, x, w, p, b)
    assert np.all(tail == SENTINEL)
    fmt = op.LAYOUT[op.GEMV if "gemv" in variant else op.GEMM]
    shape = op.output_spec(op.GEMV if "gemv" in variant else op.GEMM, m, 37)
    expected = (layouts.pack_int8_4w if fmt == layouts.INT8_4W else layouts.pack_int8_4h4w)(
        references(x, w, b, p)[0])
    np.testing.assert_array_equal(words.reshape(shape), expected.arrays["data"])  # padding bytes 0


@pytest.mark.parametrize("variant", GEMV_VARIANTS + GEMM_VARIANTS)
def test_integer_accumulators_are_exact(device, variant):
    check_exact_accumulators(device, variant, 1 if "gemv" in variant else 6)


def check_exact_accumulators(device, variant: str, m: int) -> None:
    """ACC_OUT int32 accumulators equal numpy's, extreme (-128) products included, and
    nothing is written past them."""
    rng = np.random.default_rng(11)
    for k in (1028, 1027):  # 1027: K padded to 1028 with zero columns
        x, w, _ = make_case(rng, m, 23, k)
        x[0] = -128
        w_ext = vkq.QuantizedWeight(np.where(np.arange(23)[:, None] % 2 == 0, np.int8(-128),
                                             w.q).astype(np.int8), w.scales, bits=8)
        words, tail = _run_into(device, variant, x, w_ext, qparams(), acc_out=True)
        assert np.all(tail == SENTINEL)
        acc = words.reshape(m, -1)[:, :23]
        np.testing.assert_array_equal(acc, q8ta_accumulators(x, w_ext.q))
        assert acc[0, 0] == 128 * 128 * k  # extreme products accumulate exactly


# -- epilogue corner cases -------------------------------------------------------------------


@pytest.mark.parametrize("zp_x,zp_out", [(-128, 127), (127, -128), (-128, -128), (127, 127)])
def test_extreme_zero_points_and_saturation(device, zp_x, zp_out):
    rng = np.random.default_rng(zp_x + 2 * zp_out + 1000)
    x, w, b = make_case(rng, 6, 21, 132)
    p = qparams(zp_x=zp_x, zp_out=zp_out, s_out=0.02)  # small output scale: many outputs clamp
    for kernel in ("gemv", "gemm"):
        y = vkq.linear(x, w, b, **p, kernel=kernel, device=device)
        assert_matches(y, x, w, b, p)
        assert (y == -128).any() and (y == 127).any()


@pytest.mark.parametrize("bias", [False, True])
def test_relu_with_and_without_bias(device, bias):
    rng = np.random.default_rng(5 + bias)
    x, w, b = make_case(rng, 4, 30, 96, bias=bias)
    p = qparams(zp_out=-20, activation="relu")
    for kernel in ("gemv", "gemm"):
        y = vkq.linear(x, w, b, **p, kernel=kernel, device=device)
        assert_matches(y, x, w, b, p)
        assert y.min() == -20  # relu clamps at the output zero point, which does occur


def test_round_half_to_even(device):
    """mult = s_x*s_w/s_out = 0.5 exactly: odd accumulators land on .5 and round to even."""
    x = np.array([[1, 0, 0, 0], [3, 0, 0, 0], [5, 0, 0, 0], [-1, 0, 0, 0]], np.int8)
    w = vkq.QuantizedWeight(np.array([[1, 0, 0, 0]], np.int8), np.array([1.0], np.float32), bits=8)
    p = qparams(s_x=0.5, zp_x=0, s_out=1.0, zp_out=0)
    for kernel in ("gemv", "gemm"):
        y = vkq.linear(x, w, None, **p, kernel=kernel, device=device)
        np.testing.assert_array_equal(y[:, 0], [0, 2, 2, 0])  # 0.5, 1.5, 2.5, -0.5


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_largest_k_uses_33_bit_zero_point_correction(device, kernel):
    """K = 131068: sum_k (x - zp_x) * w reaches 255*127*K > 2^31; the kernels still convert the
    exact difference to float (module q8ta_requant.glsl)."""
    k = 131068
    x = np.full((1, k), 127, np.int8)
    q = np.full((4, k), 127, np.int8)
    q[1] = -127
    q[2, ::2] = -127
    w = vkq.QuantizedWeight(q, np.ones(4, np.float32), bits=8)
    corr = 255 * 127 * k  # 4.24e9: channel 0 (+), 1 (-), 2 (0), 3 (+)
    for s_out, expected in ((4.5e7, 94), (3e9, 1)):  # corr / s_out = 94.3, 1.41
        p = qparams(s_x=1.0, zp_x=-128, s_out=s_out, zp_out=0)
        y = vkq.linear(x, w, None, **p, kernel=kernel, device=device)
        assert_matches(y, x, w, None, p)
        assert round(corr / s_out) == expected
        np.testing.assert_array_equal(y[0], [expected, -expected, 0, expected])


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_largest_k_with_minus_128_weights(device, kernel):
    """K = 131071 (the largest allowed, odd: padded to 131072) with -128 weights: |acc| reaches
    128*128*K = 2147467264 < 2^31, and the zero-point correction 255*128*K = 4278157440
    (< 2^32) still converts exactly (q8ta_requant.glsl)."""
    k = 131071
    x = np.full((2, k), 127, np.int8)
    x[1] = -128
    q = np.full((3, k), -128, np.int8)
    q[1] = 127
    q[2, ::2] = 127  # both extremes in one channel
    w = vkq.QuantizedWeight(q, np.ones(3, np.float32), bits=8)
    p = qparams(s_x=1.0, zp_x=-128, s_out=4.5e7, zp_out=0)  # corr / s_out = -95.07 for ch 0
    y = vkq.linear(x, w, None, **p, kernel=kernel, device=device)
    assert_matches(y, x, w, None, p)
    assert y[0, 0] == round(-255 * 128 * k / 4.5e7) == -95
    words, _ = _run_into(device, op.pick_variant(kernel, device.caps, 2, 3, k), x, w, p,
                         acc_out=True)
    acc = words.reshape(2, -1)[:, :3]
    np.testing.assert_array_equal(acc, q8ta_accumulators(x, q))
    assert acc[1, 0] == 128 * 128 * k


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_zero_and_negative_weight_scales(device, kernel):
    """Checkpoints carry per-channel scales of 0 (dead channels) and of either sign: each output
    is exactly the reference's (mult = s_x*s_w/s_out may be 0 or negative)."""
    rng = np.random.default_rng(21)
    s_w = rng.uniform(0.002, 0.02, 9).astype(np.float32)
    s_w[[1, 4]] = 0.0
    s_w[[2, 5, 6]] *= -1
    x, w, b = make_case(rng, 5, 9, 37, s_w=s_w)
    p = qparams(s_out=1.0)
    y = vkq.linear(x, w, b, **p, kernel=kernel, device=device)
    assert_matches(y, x, w, b, p)
    assert np.ptp(y[:, [1, 4]], axis=0).tolist() == [0, 0]  # scale 0: bias only, every row
    w_abs = vkq.QuantizedWeight(w.q, np.abs(s_w), bits=8)
    y_abs = vkq.linear(x, w_abs, b, **p, kernel=kernel, device=device)
    assert (y[:, [2, 5, 6]] != y_abs[:, [2, 5, 6]]).any()  # the sign was not dropped


# -- routing, layouts, device tensors --------------------------------------------------------


def test_routing_is_observable_and_overridable(device):
    rng = np.random.default_rng(1)
    x, w, b = make_case(rng, 300, 9, 16)
    p = qparams()
    cases = [(x[:1], "auto", "gemv"), (x[:2], "auto", "gemm"), (x, "auto", "gemm"),
             (x[:5], "gemv", "gemv"), (x[:1], "gemm", "gemm")]
    for xi, kernel, path in cases:
        with vkq.trace() as t:
            vkq.linear(xi, w, b, **p, kernel=kernel, device=device)
        assert t.kernels == [op.pick_variant(path, device.caps, len(xi), 9, 16)]
    assert op.pick_variant("gemm", device.caps, 2, coopmat=False).endswith("t32x128")
    assert op.pick_variant("gemm", device.caps, 300, coopmat=False).endswith("t128x64")


@pytest.mark.parametrize("n,k,shape", [(9, 4, "l128b1"), (op.MANY_N, 4, "l128b2"), (3, op.LONG_K, "l256b1")])
def test_gemv_shape_follows_the_matrix(device, n, k, shape):
    rng = np.random.default_rng(n + k)
    x, w, b = make_case(rng, 1, n, k)
    p = qparams(s_out=0.05 * np.sqrt(k))
    with vkq.trace() as t:
        y = vkq.linear(x, w, b, **p, device=device)
    tuned = device.caps.integer_dot_product and device.caps.subgroup_arithmetic
    assert t.kernels[0].endswith(shape if tuned else "l128b1")
    assert_matches(y, x, w, b, p)


def test_variant_choice_follows_capabilities():
    no_dot = types.SimpleNamespace(integer_dot_product=False, subgroup_arithmetic=False)
    full = types.SimpleNamespace(integer_dot_product=True, subgroup_arithmetic=True)
    assert op.pick_variant("gemv", no_dot, 1, 9000, 9000) == "q8ta_linear_gemv_fallback_shared_l128b1"
    assert op.pick_variant("gemm", no_dot, 1000) == "q8ta_linear_fallback_t128x64"
    assert op.pick_variant("gemv", full, 1, 4096, 4096) == "q8ta_linear_gemv_idot_subgroup_l128b1"
    assert set(op.describe_variants(full).values()) <= set(GEMV_VARIANTS + GEMM_VARIANTS)
    assert set(GEMV_VARIANTS + GEMM_VARIANTS) <= set(vkq.shaderlib.declared_variants())


def test_batch_dims_and_empty_input(device):
    rng = np.random.default_rng(2)
    x, w, b = make_case(rng, 6, 11, 40)
    p = qparams()
    y = vkq.linear(x.reshape(2, 3, 40), w, b, **p, device=device)
    assert y.shape == (2, 3, 11)
    assert_matches(y.reshape(6, 11), x, w, b, p)
    assert vkq.linear(x[:0], w, b, **p, device=device).shape == (0, 11)


@pytest.mark.parametrize("layout,m,k,h", [("int8_4w", 1, 40, 36), ("int8_4h4w", 6, 40, 36),
                                          ("int8_4w", 1, 5, 37), ("int8_4h4w", 6, 3, 1)])
def test_device_tensors_chain_layers_without_host_round_trip(device, layout, m, k, h):
    """Two layers on the device; K and the hidden width need not be multiples of 4 (the
    first layer's padding output channels are 0, the second layer's padding K columns)."""
    rng = np.random.default_rng(9)
    x, w1, b1 = make_case(rng, m, h, k)
    _, w2, b2 = make_case(rng, 1, 13, h)
    p1, p2 = qparams(s_out=0.3, zp_out=-3, activation="relu"), qparams(s_x=0.3, zp_x=-3, s_out=0.2)
    xd = vkq.to_device(x, layout=layout, device=device)
    with vkq.trace() as t:
        hd = vkq.linear(xd, w1, b1, **p1)
        yd = vkq.linear(hd, w2, b2, **p2)
    assert isinstance(yd, vkq.DeviceTensor) and yd.format == layout and yd.shape == (m, 13)
    assert all(("gemv" in k) == (layout == "int8_4w") for k in t.kernels)
    h = references(x, w1, b1, p1)[0]
    np.testing.assert_array_equal(hd.numpy(), h)
    np.testing.assert_array_equal(yd.numpy(), references(h, w2, b2, p2)[0])
    other = "gemm" if layout == "int8_4w" else "gemv"
    with pytest.raises(LayoutError, match="repack|pack it"):
        vkq.linear(xd, w1, b1, **p1, kernel=other)
    if layout == "int8_4w":  # the tensor-core GEMM reads 4H4W too, and the error says who asked
        with pytest.raises(LayoutError, match="kernel='coopmat' needs its input in layout 'int8_4h4w'"):
            vkq.linear(xd, w1, b1, **p1, kernel="coopmat")
    for d in (xd, hd, yd):
        d.close()


def test_weights_are_packed_once_and_reused(device):
    rng = np.random.default_rng(4)
    x, w, b = make_case(rng, 3, 10, 20)
    p = qparams()
    vkq.linear(x, w, b, **p, device=device)
    packed = op.prepack(w, device)
    epilogue = packed.epilogue(op.QParams.check(0.05, 3, 0.25, -7, "none"), b)
    vkq.linear(x[:1], w, b, **p, device=device)
    assert op.prepack(w, device) is packed
    assert packed.epilogue(op.QParams.check(0.05, 3, 0.25, -7, "none"), b) is epilogue
    w.release()
    assert packed.closed and op.prepack(w, device) is not packed


# -- errors ----------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(device):
    rng = np.random.default_rng(6)
    x, w, b = make_case(rng, 2, 8, 12)
    p = qparams()

    def call(xx=x, ww=w, bb=b, **over):
        return vkq.linear(xx, ww, bb, **{**p, **over}, device=device)

    with pytest.raises(TypeError, match="int8"):
        call(xx=x.astype(np.float32))
    with pytest.raises(TypeError, match="int8"):
        call(xx=x.astype(np.int16))
    with pytest.raises(ValueError, match="K = 16 .* K = 12"):
        call(xx=np.zeros((2, 16), np.int8))
    with pytest.raises(ValueError, match="131072"):
        op.check_k(131072)
    for name in ("input_scale", "output_scale"):
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=name):
                call(**{name: bad})
    for name in ("input_zero_point", "output_zero_point"):
        for bad in (-129, 128):
            with pytest.raises(ValueError, match=rf"{name}.*\[-128, 127\]"):
                call(**{name: bad})
        with pytest.raises(TypeError, match=name):
            call(**{name: 1.5})
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        call(bb=np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="bias must be a float"):
        call(bb=np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="bias must be finite"):
        call(bb=np.full(8, np.nan, np.float32))
    with pytest.raises(ValueError, match="activation"):
        call(activation="gelu")
    with pytest.raises(ValueError, match="kernel"):
        call(kernel="fast")
    with pytest.raises(ValueError, match="overflows float32"):
        call(input_scale=1e30, output_scale=1e-30)
    with pytest.raises(TypeError, match="input_zero_point"):
        vkq.linear(x, w, b, input_scale=0.1, output_scale=0.1, output_zero_point=0, device=device)
    w4 = vkq.quantize_weight(np.ones((8, 32), np.float32), bits=4, group_size=32)
    with pytest.raises(ValueError, match="bits=8"):
        q8ta(np.zeros((1, 32), np.int8), w4, **p, device=device)
    with pytest.raises(ValueError, match="does not implement"):
        q8ta(x, w, b, **p, kernel="gemv", variant=GEMM_VARIANTS[0], device=device)


@pytest.mark.slow
@pytest.mark.parametrize("m,n,k", [(64, 300, 4096), (33, 1000, 1028), (130, 77, 2048), (1, 4099, 4096)])
def test_larger_shapes(device, m, n, k):
    rng = np.random.default_rng(m + n + k)
    x, w, b = make_case(rng, m, n, k)
    p = qparams(s_out=1.5)
    y_gemv = vkq.linear(x, w, b, **p, kernel="gemv", device=device)
    assert_matches(y_gemv, x, w, b, p)
    np.testing.assert_array_equal(vkq.linear(x, w, b, **p, kernel="gemm", device=device), y_gemv)
