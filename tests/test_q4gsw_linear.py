"""q4gsw linear (float x int4 group-wise weights) against the float64 numpy reference."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vkq
from vkq import layouts
from vkq.bench.suites.q4gsw_linear import sweep_gemv_configs
from vkq.layouts import LayoutError
from vkq.ops import q4gsw_linear as op
from vkq.reference.q4gsw import q4gsw_dequantize_reference, q4gsw_linear_reference

U = 2.0 ** -24  # unit roundoff of float32
MS = (1, 2, 3, 4, 5, 33)


def tolerance(x: np.ndarray, w: vkq.QuantizedWeight, bias: np.ndarray | None) -> np.ndarray:
    """Per-output bound on |y - ref64| for fp32 kernels.

    Every kernel forms y[m, n] as a sum of the K products x_k * w_k in some order (the
    symmetric GEMV sums x_k * (u_k - 8) per group and multiplies by the scale once, which is
    the same terms times one factor of either sign; the others multiply by w_k dequantized in fp32,
    w_k * (1 + d), |d| <= u). Summing K terms in fp32 in any order (sequential, tree,
    subgroup) errs by at most (K - 1) * u * sum_k |x_k w_k| to first order; the product,
    the dequantization, the shift-class recombination (3 adds per word), the scale multiply
    and the bias add put a handful more roundings on each term's path. So
    c * K_eff * u * sum|x_k w_k| with c = 1, K_eff = K + 16, plus u * |bias| for the last
    add and a denormal-sized absolute term, is a rigorous bound, not a fitted one.
    """
    w64 = np.abs(q4gsw_dequantize_reference(w.q, w.scales, w.zeros, w.group_size))
    k = x.shape[-1]
    with np.errstate(invalid="ignore"):  # NaN/Inf tests: the bound is only used where finite
        mag = np.abs(x.astype(np.float64)) @ w64.T
    extra = 0.0 if bias is None else U * np.abs(bias.astype(np.float64))
    return (k + 16) * U * mag + extra + 1e-30


def fp16_tolerance(x: np.ndarray, w: vkq.QuantizedWeight, bias: np.ndarray | None) -> np.ndarray:
    """Per-output bound on |y - ref64| for the coopmat GEMM (fp16 operands, fp32 sums).

    x is scaled by 2^-e per row and w by 2^-E (exact), each then rounded to fp16 once (w
    after one fp32 fma): relative error <= 2^-10 in either rounding mode Vulkan allows, or,
    in fp16's subnormal range, an absolute 2^-24 * 2^e <= 2^-38 * max|x_row| (2^-38 * max|w|
    for w, likewise). A product of the rounded operands is exact in fp32 and errs by
    (2^-9 + 2^-19) |x w| to first order plus those absolute terms times the other operand.
    The K products are summed in fp32 (tensor cores may truncate rather than round: unit
    2^-23), then the split-K slices and the bias: (K + 16) * 2^-23 * sum|x w| covers every
    addition, 2^-23 |bias| the last one."""
    x2 = np.abs(x.reshape(-1, x.shape[-1]).astype(np.float64))
    w64 = np.abs(q4gsw_dequantize_reference(w.q, w.scales, w.zeros, w.group_size))
    k = x2.shape[-1]
    with np.errstate(invalid="ignore"):
        mag = x2 @ w64.T
        subnormal = 2.0 ** -36 * (x2.max(axis=1, keepdims=True) * w64.sum(axis=1)[None, :]
                                  + w64.max(initial=0.0) * x2.sum(axis=1)[:, None])
    extra = 0.0 if bias is None else 2.0 ** -23 * np.abs(bias.astype(np.float64))
    bound = (2.0 ** -9 + 2.0 ** -19 + (k + 16) * 2.0 ** -23) * mag + subnormal + extra + 1e-30
    return bound.reshape(*x.shape[:-1], w.shape[0])


def make_weight(n: int, k: int, gs: int, symmetric: bool, seed: int,
                param_dtype: str = "auto") -> vkq.QuantizedWeight:
    """quantize_weight's default gives fp16 scales/zeros (the kernels' "_p16" variants);
    param_dtype="float32" gives values fp16 cannot hold (the float32-parameter variants)."""
    rng = np.random.default_rng(seed)
    w = vkq.quantize_weight(rng.standard_normal((n, k)), bits=4, group_size=gs,
                            symmetric=symmetric, param_dtype=param_dtype)
    assert half_params(w) == (param_dtype != "float32")
    return w


def half_params(w: vkq.QuantizedWeight) -> bool:
    """Whether vkq.linear stores w's scales/zeros as fp16 on the device."""
    return op.stored_param_dtype(w.scales, w.zeros) == "float16"


def check(y: np.ndarray, x: np.ndarray, w: vkq.QuantizedWeight, bias: np.ndarray | None,
          fp16: bool = False) -> None:
    """y against the reference within the fp32 bound (`fp16`: the coopmat GEMM's bound)."""
    ref = q4gsw_linear_reference(x, w.q, w.scales, w.zeros, w.group_size, bias)
    assert y.dtype == np.float32 and y.shape == ref.shape
    err = np.abs(y - ref)
    tol = (fp16_tolerance if fp16 else tolerance)(x, w, bias)
    assert np.all(err <= tol), f"max err {err.max():.3g}, worst err/tol {np.max(err / tol):.3g}"


def gemv_name(w: vkq.QuantizedWeight, device, m: int = 1) -> str:
    n, k = w.shape
    sub = device.caps.subgroup_shuffle
    cfg = op.pick_gemv_config(n, k, device.caps.max_shared_memory, sub, m)
    return op.gemv_variant(not w.symmetric, w.group_size, cfg, sub, half_params(w))


def routed_kernels(w: vkq.QuantizedWeight, device, m: int) -> list[str]:
    """What kernel="auto" must run for M rows: the GEMV up to GEMV_MAX_ROWS rows (where the
    device has a shape for them), else the GEMM."""
    n, k = w.shape
    caps = device.caps
    if m <= op.GEMV_MAX_ROWS and op.pick_gemv_config(n, k, caps.max_shared_memory,
                                                      caps.subgroup_shuffle, m) is not None:
        return [gemv_name(w, device, m)]
    return gemm_kernels(w, m, device)


def gemm_kernels(w: vkq.QuantizedWeight, m: int, device=None) -> list[str]:
    """The kernels of kernel="gemm", or with `device`, of the GEMM kernel="auto" runs: on
    tensor cores where the device has them (the coopmat GEMM, tests/test_coopmat.py)."""
    n, k = w.shape
    if (device is not None and op.coopmat_capable(device.caps) is None
            and op.fp16_exponent(w.scales, w.zeros) is not None):
        return op.plan_coopmat(m, n, k, not w.symmetric, half_params=half_params(w)).kernels
    return op.plan_gemm(m, n, k, not w.symmetric, half_params=half_params(w)).kernels


# ------------------------------------------------------------------ accuracy over shapes
# K = 512: groups that are whole 32-nibble words (the GEMV's "word" mode) up to gs = K.
# K = 528 (16 nibbles of padding in the last word): groups of 8/16/24/48 nibbles ("comp"
# mode) and gs = K.
CASES = [(512, gs) for gs in (32, 64, 128, 256, 512)] + [(528, gs) for gs in (8, 16, 24, 48, 528)]
# Every group size runs with fp16 parameters (quantize_weight's default, and the harder load:
# two per word, the last word half padding where a row has an odd number of groups).
# float32 parameters change only how a parameter is loaded (PARAM in group_params.glsl; the
# group index is the same expression), so they run at one group size per mode here, and at
# four more bit-exactly in test_exact_arithmetic_is_bit_exact. Each group size is a pipeline
# per kernel (a spec constant): the full cross product compiled 31 more, ~20 s of lavapipe
# compilation on a cold shader cache, for no group index the cases below do not reach.
P32_GROUP_SIZES = (64, 48)
ACCURACY_CASES = [(k, gs, sym, "auto") for k, gs in CASES for sym in (True, False)] + \
                 [(k, gs, sym, "float32") for k, gs in CASES if gs in P32_GROUP_SIZES
                  for sym in (True, False)]


@pytest.mark.parametrize("k,gs,symmetric,params", ACCURACY_CASES, ids=[
    f"K{k}-gs{gs}-{'sym' if sym else 'asym'}-{'p32' if params == 'float32' else 'p16'}"
    for k, gs, sym, params in ACCURACY_CASES])
def test_matches_reference(device, k, gs, symmetric, params):
    n = 37  # not a multiple of 4 (GEMV rows per workgroup) nor of 8
    w = make_weight(n, k, gs, symmetric, seed=k + gs, param_dtype=params)
    rng = np.random.default_rng(gs)
    for m in MS:
        x = rng.standard_normal((m, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if m % 2 else None
        with vkq.trace() as t:
            y = vkq.linear(x, w, bias, device=device)
        assert t.kernels == routed_kernels(w, device, m)
        check(y, x, w, bias, fp16=t.kernels[0].startswith("q4gsw_coopmat"))


@pytest.mark.parametrize("k,gs,symmetric", [(4352, 128, True), (4352, 32, False), (4104, 8, True)])
def test_long_k_gemv_steps(device, k, gs, symmetric):
    # K large enough for two whole steps of the routed GEMV shape (N = 21: 64 words per
    # step) plus a bounds-checked tail.
    w = make_weight(21, k, gs, symmetric, seed=k)
    x = np.random.default_rng(k).standard_normal((1, k)).astype(np.float32)
    for kernel in ("gemv", "gemm"):
        check(vkq.linear(x, w, kernel=kernel, device=device), x, w, None)


def exact_weight(n: int, k: int, gs: int, symmetric: bool, seed: int) -> vkq.QuantizedWeight:
    """Scales 2^-3..2^0 and zeros on a 2^-6 grid: with small-integer x every product, partial
    sum and dequantized weight is exact in fp32, so any kernel must match bit for bit."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    s = 2.0 ** rng.integers(-3, 1, size=(n, k // gs))
    z = None if symmetric else rng.integers(-64, 65, size=(n, k // gs)) / 64.0
    return vkq.QuantizedWeight(q, s, z, bits=4, group_size=gs)


def prepack_exact(device, n: int, k: int, gs: int, symmetric: bool,
                  params: str) -> tuple[vkq.QuantizedWeight, op.Q4gswWeight]:
    """exact_weight (seeded by gs) and its device copy with `params` parameter storage."""
    w = exact_weight(n, k, gs, symmetric, seed=gs)
    pw = op.prepack_q4gsw(layouts.pack_int4_weight(w.q),
                          layouts.pack_group_params(w.scales, w.zeros, gs, k), device, params)
    assert pw.param_dtype == params
    return w, pw


@pytest.mark.parametrize("params", ["float16", "float32"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k,gs", [(512, 32), (512, 128), (264, 8), (264, 24)])
def test_exact_arithmetic_is_bit_exact(device, k, gs, symmetric, params):
    # A single wrong nibble, scale or group index changes the result by >= 2^-9: the
    # accuracy bound above could hide it at large K, this cannot. The parameters are fp16
    # numbers, stored either way: the fp16 variants must decode every one exactly.
    w, pw = prepack_exact(device, 19, k, gs, symmetric, params)
    rng = np.random.default_rng(k)
    try:
        for m, kernel in ((1, "gemv"), (1, "gemm"), (5, "gemm"), (2, "gemv"), (5, "gemv")):
            x = rng.integers(-4, 5, size=(m, k)).astype(np.float32)
            bias = rng.integers(-8, 9, size=19).astype(np.float32)
            y = vkq.linear(x, pw, bias, kernel=kernel)
            ref = q4gsw_linear_reference(x, w.q, w.scales, w.zeros, gs, bias)
            np.testing.assert_array_equal(y, ref.astype(np.float32))
    finally:
        pw.close()


@pytest.mark.parametrize("params", ["float16", "float32"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("gs", [32, 8])
def test_zero_and_negative_scales(device, gs, symmetric, params):
    """Checkpoints from other tools: groups with scale 0 (all-zero blocks) and negative scales
    (ggml Q4_0), in fp16 or float32 storage, on every path (GEMV, batch GEMV, GEMM)."""
    n, k = 21, 128
    rng = np.random.default_rng(gs + symmetric)
    w0 = make_weight(n, k, gs, symmetric, seed=gs, param_dtype="auto")
    s = w0.scales.copy()
    s[::3] *= -1                      # every third channel: all scales negative
    s[1, 0] = s[4, -1] = 0.0          # scale-0 groups
    s[7] = -0.0
    s[2, ::2] *= -1                   # mixed signs within a channel
    w = vkq.QuantizedWeight(w0.q, s, w0.zeros, bits=4, group_size=gs)
    pw = op.prepack_q4gsw(layouts.pack_int4_weight(w.q),
                          layouts.pack_group_params(w.scales, w.zeros, gs, k), device, params)
    assert pw.param_dtype == params   # fp16 storage holds 0, -0 and negative scales exactly
    try:
        for m, kernel in ((1, "gemv"), (2, "gemv"), (5, "gemv"), (1, "gemm"), (33, "gemm")):
            x = rng.standard_normal((m, k)).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            check(vkq.linear(x, pw, bias, kernel=kernel), x, w, bias)
        with vkq.trace() as t:
            y = vkq.linear(x, w, device=device)  # through QuantizedWeight as well
        check(y, x, w, None, fp16=t.kernels[0].startswith("q4gsw_coopmat"))
        if symmetric:
            assert np.all(y[:, 7] == 0)   # a channel of -0 scales contributes nothing
    finally:
        pw.close()
    assert half_params(w)  # "auto" storage of these fp16-exact scales: fp16


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_gemv_and_gemm_agree(device, symmetric, m):
    w = make_weight(45, 1024, 64, symmetric, seed=7)
    x = np.random.default_rng(8).standard_normal((m, 1024)).astype(np.float32)
    with vkq.trace() as t:
        y_gemv = vkq.linear(x, w, kernel="gemv", device=device)
        y_gemm = vkq.linear(x, w, kernel="gemm", device=device)
    assert t.kernels == [gemv_name(w, device, m)] + gemm_kernels(w, m)
    check(y_gemv, x, w, None)
    check(y_gemm, x, w, None)
    assert np.all(np.abs(y_gemv - y_gemm) <= 2 * tolerance(x, w, None))


def test_routing(device, monkeypatch):
    # the fp32 kernels' routing table (tensor cores: tests/test_coopmat.py)
    monkeypatch.setattr(device, "caps", dataclasses.replace(device.caps, cooperative_matrix=()))
    w = make_weight(16, 64, 32, True, seed=1)
    x1 = np.ones((1, 64), np.float32)
    lim = op.GEMV_MAX_ROWS
    with vkq.trace() as t:
        vkq.linear(x1, w, device=device)                    # M == 1 -> GEMV
        vkq.linear(x1[0], w, device=device)                 # 1-D x is one row too
        vkq.linear(np.ones((2, 64), np.float32), w, device=device)    # small batches: GEMV
        vkq.linear(np.ones((lim, 64), np.float32), w, device=device)  # with rows of x
        vkq.linear(np.ones((lim + 1, 64), np.float32), w, device=device)
        vkq.linear(np.ones((40, 64), np.float32), w, kernel="gemv", device=device)
        vkq.linear(np.ones((40, 64), np.float32), w, device=device)
        vkq.linear(np.ones((129, 64), np.float32), w, device=device)
        vkq.linear(np.ones((129, 64), np.float32), w, device=device)
        vkq.linear(x1, w, kernel="gemm", device=device)
    gemv = gemv_name(w, device)
    assert gemv.endswith("_p16")  # quantize_weight's fp16 parameters
    # the 128x64 tile reads float32 parameters: widened once, at its first use
    assert t.kernels == [gemv, gemv, gemv_name(w, device, 2), gemv_name(w, device, lim),
                         "q4gsw_gemm_sym_32x64_p16", gemv_name(w, device, 40),
                         "q4gsw_gemm_sym_64x64_p16",
                         "q4gsw_params_widen", "q4gsw_gemm_sym_128x64", "q4gsw_gemm_sym_128x64",
                         "q4gsw_gemm_sym_32x64_p16"]  # K = 64: too short to split
    assert "xm2_" in gemv_name(w, device, 2) and "xm4_" in gemv_name(w, device, lim)
    pw = op.prepack_quantized(w, device)
    x2 = device.upload(np.ones((2, 64), np.float32))
    y2 = device.buffer(4 * 2 * 16)
    try:
        with device.batch() as b:
            with pytest.raises(ValueError, match="one row of x"):
                op.record_linear(b, pw, x2, y2, 2, kernel="gemv", gemv_config=op.GEMV_FALLBACK)
            with pytest.raises(ValueError, match="subgroup shuffles"):
                op.record_linear(b, pw, x2, y2, 2, kernel="gemv", gemv_subgroup=False)
            # no GEMV shape for M > 1 without shuffles: "auto" runs the GEMM
            op.record_linear(b, pw, x2, y2, 2, gemv_subgroup=False)
        assert b.kernel_names == ["q4gsw_gemm_sym_32x64_p16"]
    finally:
        for buf in (pw, x2, y2):
            buf.close()


def test_batch_dims_float16_and_empty(device):
    w = make_weight(9, 64, 16, False, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 3, 64)).astype(np.float16)
    y = vkq.linear(x, w, device=device)
    assert y.shape == (2, 3, 9)
    check(y.reshape(6, 9), x.reshape(6, 64).astype(np.float32), w, None)
    assert vkq.linear(np.ones((0, 64), np.float32), w, device=device).shape == (0, 9)


# ------------------------------------------------------------------ NaN / Inf
def special_weight(symmetric: bool) -> vkq.QuantizedWeight:
    """Channels whose weight at k = 0 is 0 (inf * 0 -> NaN), positive, negative, and for
    asymmetric weights u = 8 with a non-zero zero point (w = zero, not 0)."""
    k, gs = 64, 32
    q = np.ones((6, k), np.int8)
    s = np.full((6, 2), 0.5)
    z = None if symmetric else np.zeros((6, 2))
    q[0, 0] = 0                      # w = 0 (symmetric); asymmetric: w = zero = 0 too
    q[1, 0] = 3                      # w > 0
    q[2, 0] = -5                     # w < 0
    if not symmetric:
        q[3, 0], z[3, 0] = 0, 0.25   # u = 8, w = zero > 0: inf stays inf
        q[4, 0], z[4, 0] = -1, 0.5   # (u - 8) * s + zero == 0 exactly: NaN
        q[5, 0], z[5, 0] = 1, -2.0   # sign flipped by the zero: -inf
    return vkq.QuantizedWeight(q, s, z, bits=4, group_size=gs)


def assert_like_reference(y: np.ndarray, x: np.ndarray, w: vkq.QuantizedWeight) -> None:
    """NaN exactly where the reference has NaN, the same infinities, finite values within
    the bound."""
    ref = q4gsw_linear_reference(x, w.q, w.scales, w.zeros, w.group_size)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    finite = np.isfinite(ref)
    inf = ~finite & ~np.isnan(ref)
    np.testing.assert_array_equal(y[inf], ref[inf])
    assert np.all(np.abs(y[finite] - ref[finite]) <= tolerance(x, w, None)[finite])


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_nan_inf_propagate_like_reference(device, symmetric, kernel):
    w = special_weight(symmetric)
    rows = [(0, np.inf), (0, -np.inf), (5, np.nan), (0, 1.0)]
    for j, v in rows:
        x = np.full((1, 64), 0.5, np.float32)
        x[0, j] = v
        assert_like_reference(vkq.linear(x, w, kernel=kernel, device=device), x, w)
    # All rows in one call (the GEMV takes them in one workgroup): each row's NaN and Inf
    # stay in its own outputs.
    x = np.full((len(rows), 64), 0.5, np.float32)
    for i, (j, v) in enumerate(rows):
        x[i, j] = v
    assert_like_reference(vkq.linear(x, w, kernel=kernel, device=device), x, w)


# ------------------------------------------------------------------ huge activations
PATHS = ((1, "gemv"), (2, "gemv"), (1, "gemm"), (2, "gemm"))  # GEMV, batch GEMV, GEMM


@pytest.mark.parametrize("gs", [32, 16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("mag", [1e34, 1e35, 1e36])
def test_huge_activations_give_the_reference_on_every_path(device, mag, symmetric, gs):
    """|x| up to a few 1e36: x * w and the sums stay finite in fp32, so every path must give
    the reference within the bound. The symmetric GEMV used to decode nibbles as (u - 8) * 2^s
    and returned NaN here (its shift-class sums overflowed while the GEMM's did not)."""
    w = make_weight(24, 256, gs, symmetric, seed=gs)
    x = (np.random.default_rng(int(np.log10(mag))).standard_normal((2, 256)) * mag
         ).astype(np.float32)
    assert np.all(np.isfinite(q4gsw_linear_reference(x, w.q, w.scales, w.zeros, gs)))
    for m, kernel in PATHS:
        with vkq.trace() as t:
            y = vkq.linear(x[:m], w, kernel=kernel, device=device)
        assert t.kernels[0] == (gemv_name(w, device, m) if kernel == "gemv"
                                else gemm_kernels(w, m)[0])
        check(y, x[:m], w, None)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_overflowing_results_are_the_same_inf_on_every_path(device, symmetric):
    """Where the true result overflows fp32 (every product one sign, |x| = 1e38), every path
    gives the reference's infinity, with its sign."""
    q = np.full((8, 64), 7, np.int8)
    s = np.full((8, 2), 1.0, np.float32)
    z = None if symmetric else np.full((8, 2), 0.5, np.float32)
    w = vkq.QuantizedWeight(q, s, z, bits=4, group_size=32)
    x = np.full((2, 64), 1e38, np.float32)
    x[1] *= -1
    with np.errstate(over="ignore"):
        ref = q4gsw_linear_reference(x, q, s, z, 32).astype(np.float32)
    assert np.all(ref[0] == np.inf) and np.all(ref[1] == -np.inf)
    for m, kernel in PATHS:
        np.testing.assert_array_equal(vkq.linear(x[:m], w, kernel=kernel, device=device), ref[:m])


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs(device):
    w = make_weight(8, 64, 32, True, seed=5)
    x = np.ones((1, 64), np.float32)
    with pytest.raises(TypeError, match="float"):
        vkq.linear(x.astype(np.int8), w, device=device)
    with pytest.raises(ValueError, match="K = 64"):
        vkq.linear(np.ones((1, 72), np.float32), w, device=device)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        vkq.linear(x, w, np.ones(7, np.float32), device=device)
    with pytest.raises(TypeError, match="bias must be a float"):
        vkq.linear(x, w, np.ones(8, np.int32), device=device)
    with pytest.raises(ValueError, match="kernel must be"):
        vkq.linear(x, w, kernel="fast", device=device)
    with pytest.raises(ValueError, match="int4"):
        op.OPS["q4gsw_linear"].prepack(vkq.quantize_weight(np.ones((8, 64)), bits=8), device)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        vkq.linear(x, np.ones((8, 64)), device=device)


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_kernels_refuse_k_of_2_to_the_31(device, kernel):
    # Both shaders derive their nibble exponent from pc.k >> 31, so K >= 2^31 must never
    # reach them. Only the shape is looked at: the buffers stay tiny.
    k = 1 << 31
    with device.buffer(64) as buf:
        w = op.Q4gswWeight(device, (8, k), 64, buf, buf, None)
        with device.batch() as b, pytest.raises(ValueError, match="K < 2\\^31"):
            op.record_linear(b, w, buf, buf, 1, kernel=kernel)


def test_gemv_refuses_more_row_blocks_than_the_device_dispatches(device):
    # kernel="gemv" takes any M in blocks of mr rows along gl_WorkGroupID.z; past the device's
    # z limit it must say so rather than drop rows. Only the shape is looked at.
    w = make_weight(16, 64, 32, True, seed=2)
    pw = op.prepack_quantized(w, device)
    m = 4 * device.caps.max_workgroup_count[2] + 1
    try:
        with device.buffer(64) as buf, device.batch() as b:
            with pytest.raises(ValueError, match="row blocks"):
                op.record_linear(b, pw, buf, buf, m, kernel="gemv")
    finally:
        pw.close()


@pytest.mark.parametrize("gs", [0, 4, 12, 20, 96])
def test_unsupported_group_sizes_are_refused(gs):
    # 4, 12, 20: not multiples of 8 (a group would split a 32-bit word); 96 does not divide 64.
    with pytest.raises(ValueError, match="group_size"):
        vkq.quantize_weight(np.ones((8, 64)), bits=4, group_size=gs)
    with pytest.raises(ValueError, match="group_size"):
        vkq.QuantizedWeight(np.zeros((8, 64), np.int8), np.ones((8, 2)), bits=4, group_size=gs)
    with pytest.raises(ValueError, match="group_size"):
        layouts.pack_group_params(np.ones((8, 2), np.float32), None, gs, 64)


# ------------------------------------------------------------------ packed weights
def packed_inputs(n: int, k: int, gs: int, symmetric: bool):
    w = make_weight(n, k, gs, symmetric, seed=n * k)
    return w, layouts.pack_int4_weight(np.asarray(w.q))


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_gn_layout_scales_are_refused_with_repack_hint(device, symmetric):
    # N == n_groups: the [n_groups, N] arrays have exactly the [N, n_groups] shape, so only
    # the format name can tell them apart.
    n, k, gs = 8, 64, 8
    w, wp = packed_inputs(n, k, gs, symmetric)
    zeros_t = None if symmetric else np.ascontiguousarray(w.zeros.T)
    gn = layouts.pack_group_params_gn(np.ascontiguousarray(w.scales.T), zeros_t, gs, k)
    assert gn.arrays["scales"].shape == (n, k // gs)
    with pytest.raises(LayoutError, match="group_params_ng.*group_params_gn.*repack_group_params_ng"):
        op.prepack_q4gsw(wp, gn, device)
    with pytest.raises(LayoutError, match="int4_uvec4"):
        op.prepack_q4gsw(gn, gn, device)
    pw = op.prepack_q4gsw(wp, layouts.repack_group_params_ng(gn), device)
    try:
        assert (pw.format, pw.version, pw.shape, pw.group_size) == ("q4gsw_weight", 2, (n, k), gs)
        assert pw.layouts == {"weight": ("int4_uvec4", 1), "params": ("group_params_ng", 1)}
        x = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
        for m in (1, 3):
            check(vkq.linear(x[:m], pw), x[:m], w, None)
    finally:
        pw.close()
    with pytest.raises(ValueError, match="closed"):
        vkq.linear(x, pw)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_parameter_storage_follows_fp16_exactness(device, symmetric):
    n, k, gs = 8, 64, 32
    q = np.zeros((n, k), np.int8)
    wp = layouts.pack_int4_weight(q)
    half_s = np.full((n, 2), 0.375, np.float32)
    half_z = None if symmetric else np.full((n, 2), -1.5, np.float32)

    def stored(s, z, param_dtype="auto"):
        pw = op.prepack_q4gsw(wp, layouts.pack_group_params(s, z, gs, k), device, param_dtype)
        with_zeros = 1 if symmetric else 2
        assert pw.nbytes == n * 2 * 16 + with_zeros * n * 2 * (2 if pw.half_params else 4)
        pw.close()
        return pw.param_dtype

    assert stored(half_s, half_z) == "float16"
    assert stored(half_s, half_z, "float16") == "float16"
    assert stored(half_s, half_z, "float32") == "float32"
    for bad in (0.1, 2.0 ** -20, 1e5):  # inexact; exact but subnormal in fp16; too large
        s = half_s.copy()
        s[3, 1] = bad
        assert stored(s, half_z) == "float32"
        with pytest.raises(ValueError, match="param_dtype='float16'"):
            stored(s, half_z, "float16")
        if not symmetric:
            z = half_z.copy()
            z[5, 0] = bad
            assert stored(half_s, z) == "float32"
    with pytest.raises(ValueError, match="param_dtype must be"):
        stored(half_s, half_z, "bfloat16")


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_float32_params_widen_fp16_exactly_once(device, symmetric):
    n, k, gs = 13, 264, 24  # 13 x 11 parameters: the last word is half padding
    w = make_weight(n, k, gs, symmetric, seed=4)
    pw = op.prepack_quantized(w, device)
    assert pw.half_params
    scales, zeros = pw.float32_params()
    assert pw.float32_params() == (scales, zeros)  # made once, then kept
    with device.batch() as b:
        got = [b.download(buf) for buf in (scales, zeros) if buf is not None]
    np.testing.assert_array_equal(got[0].result().view(np.float32), w.scales.reshape(-1))
    if symmetric:
        assert zeros is None
    else:
        np.testing.assert_array_equal(got[1].result().view(np.float32), w.zeros.reshape(-1))
    pw.close()  # frees the float32 copies too
    assert all(buf.closed for buf in (scales, zeros) if buf is not None)
    p32 = op.prepack_quantized(vkq.quantize_weight(np.ones((4, 64)), bits=4, group_size=32,
                                                   param_dtype="float32"), device)
    assert p32.float32_params() == (p32.scales, p32.zeros)  # nothing to widen
    p32.close()


def test_quantize_weight_parameter_dtypes():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((16, 128))
    for symmetric in (True, False):
        w16 = vkq.quantize_weight(W, bits=4, group_size=32, symmetric=symmetric)
        w32 = vkq.quantize_weight(W, bits=4, group_size=32, symmetric=symmetric, param_dtype="float32")
        assert half_params(w16) and not half_params(w32)
        # both are quantizations of W: every weight within half a step of its group's scale
        for w in (w16, w32):
            err = np.abs(w.dequantize() - W)
            step = np.repeat(w.scales, 32, axis=1)
            assert np.all(err <= 0.5 * step * (1 + 1e-3) + 1e-7)
    # scales below fp16's normal range: "auto" keeps float32, "float16" refuses
    tiny = W * 1e-6
    assert not half_params(vkq.quantize_weight(tiny, bits=4, group_size=32))
    with pytest.raises(ValueError, match="normal range"):
        vkq.quantize_weight(tiny, bits=4, group_size=32, param_dtype="float16")
    with pytest.raises(ValueError, match="param_dtype must be"):
        vkq.quantize_weight(W, bits=4, group_size=32, param_dtype="half")


def test_prepack_rejects_mismatched_shapes(device):
    _, wp = packed_inputs(8, 64, 32, True)
    params = layouts.pack_group_params(np.ones((8, 4), np.float32), None, 32, 128)
    with pytest.raises(ValueError, match="differ"):
        op.prepack_q4gsw(wp, params, device)


def test_prepacked_copy_is_cached(device):
    w = make_weight(8, 64, 32, True, seed=9)
    x = np.ones((1, 64), np.float32)
    vkq.linear(x, w, device=device)
    before = device.live_objects()
    vkq.linear(x, w, device=device)
    vkq.linear(np.ones((4, 64), np.float32), w, device=device)
    assert device.live_objects() == before


def test_device_tensor_in_and_out(device):
    w1 = make_weight(24, 64, 32, True, seed=11)
    w2 = make_weight(5, 24, 8, False, seed=12)
    x = np.random.default_rng(13).standard_normal((2, 64)).astype(np.float32)
    with vkq.to_device(x, device=device) as xd:
        with vkq.linear(xd, w1) as hd, vkq.linear(hd, w2) as yd:
            assert isinstance(yd, vkq.DeviceTensor) and yd.shape == (2, 5)
            h = hd.numpy()
            y = yd.numpy()
    check(h, x, w1, None)
    check(y, h, w2, None)
    # float16/64 device tensors are stored as float32, like numpy inputs are converted
    with vkq.to_device(x.astype(np.float64), device=device) as xd64:
        assert xd64.dtype == np.float32
        check(vkq.linear(xd64, w1).numpy(), x, w1, None)
    with pytest.raises(TypeError, match="float32"):
        vkq.linear(vkq.to_device(x.astype(np.int8), device=device), w1)


# ------------------------------------------------------------------ out-of-bounds guards
SENTINEL = np.float32(-12345.678)
GUARD = 67  # floats of guard after each buffer's payload


def run_guarded(device, w: vkq.QuantizedWeight, x: np.ndarray, bias, **choice) -> np.ndarray:
    """Dispatch through the internal entry point with NaN after x (an out-of-bounds read of
    x would poison the sums) and a sentinel after y (an out-of-bounds write would change it)."""
    m, k = x.shape
    n = w.shape[0]
    pw = op.prepack_quantized(w, device)
    xg = np.concatenate([x.reshape(-1), np.full(GUARD, np.nan, np.float32)])
    yg = np.full(m * n + GUARD, SENTINEL, np.float32)
    bg = None if bias is None else np.concatenate([bias, np.full(GUARD, np.nan, np.float32)])
    bufs = [device.upload(xg), device.upload(yg)] + ([device.upload(bg)] if bg is not None else [])
    bufs = list(bufs)
    try:
        with device.batch() as b:
            bufs += op.record_linear(b, pw, bufs[0], bufs[1], m, bufs[2] if bg is not None else None,
                                     **choice)
            d = b.download(bufs[1])
        out = d.result().view(np.float32)
    finally:
        for buf in bufs:
            buf.close()
        pw.close()
    np.testing.assert_array_equal(out[m * n:], SENTINEL)
    return out[: m * n].reshape(m, n)


# Every shape routing picks (each in symmetric word and asymmetric component mode), plus the
# tree fallback; the slow test runs every tuning shape.
TUNING = tuple(dict.fromkeys(cfg for _, _, cfg in op.GEMV_CONFIGS))
BATCH = tuple(dict.fromkeys(cfg for _, _, cfg in op.GEMV_BATCH_CONFIGS))
# (choice, K, group size, symmetric); N = 67 leaves a ragged last GEMV workgroup and GEMM
# tile, K = 1320 ends inside a word. Tuning shapes exist for symmetric word groups only.
GUARD_CASES = (
    [(dict(kernel="gemv"), k, gs, sym) for k, gs, sym in ((1320, 8, False), (1280, 64, True))]
    # Row slots of <= 8 lanes: the shuffle reduction runs even where subgroups are 8 wide.
    + [(dict(kernel="gemv", gemv_config=op.GemvConfig(rw, 2, 1, 2)), 1320, 8, False) for rw in (4, 8)]
    + [(dict(kernel="gemv", gemv_config=op.GEMV_FALLBACK, gemv_subgroup=sub), k, gs, sym)
       for k, gs, sym in ((1320, 24, True), (1320, 8, False), (1280, 64, False))
       for sub in (False, None)]  # None: with shuffles, as routed where shared memory is short
    # K = 6400/6408: three whole steps of every routed shape (x staging's double buffer
    # swaps twice; asymmetric word groups prefetch scales and zeros) before the tail;
    # K = 1320: the tail step alone.
    + [(dict(kernel="gemv", gemv_config=c), k, gs, sym) for c in TUNING
       for k, gs, sym in ((6400, 64, True), (6400, 64, False), (6408, 8, False), (1320, 24, True))]
    # Shapes with rows of x (M = 7: the last block of 2 or 4 rows is ragged)
    + [(dict(kernel="gemv", gemv_config=c), k, gs, sym) for c in BATCH
       for k, gs, sym in ((6400, 64, True), (6408, 8, False), (1320, 24, True), (1320, 8, False))]
    + [(dict(kernel="gemm", gemm_tile=t, gemm_splits=1), 1320, 8, False) for t in ("32x64", "64x64")]
    + [(dict(kernel="gemm", gemm_tile=t, gemm_splits=s), 1320, 8, False)
       for t, s in (("32x64", 3), ("64x64", 42))]
    + [(dict(kernel="gemm", gemm_tile="16x64", gemm_splits=2), 1280, 64, True)]
    + [(dict(kernel="gemm", gemm_tile="64x128"), 1280, 64, True)]
)


@pytest.mark.parametrize("m", [5, 133])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gemm_128_row_tile(device, symmetric, m):
    # M = 133: one whole 128-row tile and a ragged one (8 rows per thread); M = 5: a tile
    # almost all rows of which lie past M. N = 67 and K = 1320 as in the guard cases below.
    w = make_weight(67, 1320, 8, symmetric, seed=5)
    x = np.random.default_rng(6).standard_normal((m, 1320)).astype(np.float32)
    bias = np.random.default_rng(7).standard_normal(67).astype(np.float32)
    for splits in (1, 3):
        y = run_guarded(device, w, x, bias, kernel="gemm", gemm_tile="128x64", gemm_splits=splits)
        check(y, x, w, bias)


def guard_param_dtypes(choice: dict) -> tuple[str, ...]:
    """fp16 parameters ("auto") everywhere; float32 ones too for the routed GEMV, the
    fallback and every GEMM tile. The parameter type changes only how a parameter is loaded
    (PARAM in group_params.glsl), never an index into x, y or the bias, which is what the
    guards watch; so the tuning shapes, each one more pipeline per type, run with fp16 only."""
    cfg = choice.get("gemv_config")
    return ("auto",) if cfg not in (None, op.GEMV_FALLBACK) else ("auto", "float32")


GUARD_RUNS = [(c, k, gs, sym, p) for c, k, gs, sym in GUARD_CASES for p in guard_param_dtypes(c)]


@pytest.mark.parametrize("choice,k,gs,symmetric,params", GUARD_RUNS, ids=[
    ("p32-" if p == "float32" else "p16-") + "-".join(str(getattr(v, "tag", v)) for v in c.values())
    + f"-K{k}-gs{gs}" for c, k, gs, _, p in GUARD_RUNS])
def test_no_out_of_bounds_access(device, choice, k, gs, symmetric, params):
    # fp16 parameters: 67 channels x an odd number of groups (K = 1320, gs = 8 or 24) leave
    # the last parameter word half padding.
    gemv_rows = getattr(choice.get("gemv_config"), "mr", 1)
    m = 1 if choice["kernel"] == "gemv" and gemv_rows == 1 else 7
    w = make_weight(67, k, gs, symmetric, seed=k, param_dtype=params)
    x = np.random.default_rng(k).standard_normal((m, k)).astype(np.float32)
    bias = np.random.default_rng(1).standard_normal(67).astype(np.float32)
    check(run_guarded(device, w, x, bias, **choice), x, w, bias)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", sweep_gemv_configs(), ids=lambda c: c.tag)
def test_every_gemv_tuning_shape(device, cfg):
    w = make_weight(67, 4160, 64, True, seed=cfg.rw + cfg.r)
    x = np.random.default_rng(cfg.u).standard_normal((1, 4160)).astype(np.float32)
    if cfg.shared_bytes > device.caps.max_shared_memory:
        with pytest.raises(ValueError, match="bytes of shared memory"):
            run_guarded(device, w, x, None, kernel="gemv", gemv_config=cfg)
        return
    check(run_guarded(device, w, x, None, kernel="gemv", gemv_config=cfg), x, w, None)


def test_gemv_shared_bytes_match_the_shader():
    # GemvConfig.shared_bytes (what routing checks against the device) restates the
    # template's array sizes; sum the rendered declarations to keep the two in step.
    import re
    from vkq.shaderlib import declared_variants, variant_info
    sizes = {"float": 4, "vec4": 16}
    for name, (_, p) in declared_variants().items():
        if not name.startswith("q4gsw_gemv_"):
            continue
        decl = re.findall(r"^shared (\w+) \w+\[(\d+)\];", variant_info(name).source, re.M)
        cfg = op.GemvConfig.from_params(p)
        want = cfg.shared_bytes + (cfg.norm_shared_bytes if p["NORM"] else 0)
        assert sum(sizes[t] * int(n) for t, n in decl) == want, name


def test_gemv_routing_respects_shared_memory():
    for n, k in ((1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336)):
        cfg = op.pick_gemv_config(n, k)
        assert cfg.xs and cfg.shared_bytes <= 32768  # fits every device we test on
        assert op.pick_gemv_config(n, k, cfg.shared_bytes) == cfg
        assert op.pick_gemv_config(n, k, cfg.shared_bytes - 1) == op.GEMV_FALLBACK
        assert op.pick_gemv_config(n, k, subgroup=False) == op.GEMV_FALLBACK
        for m in (2, 3, op.GEMV_MAX_ROWS):
            cfg = op.pick_gemv_config(n, k, m=m)
            assert cfg.xs and cfg.mr > 1 and cfg.shared_bytes <= 32768
            assert op.pick_gemv_config(n, k, cfg.shared_bytes, m=m) == cfg
            assert op.pick_gemv_config(n, k, cfg.shared_bytes - 1, m=m) is None
            assert op.pick_gemv_config(n, k, subgroup=False, m=m) is None
    assert op.GEMV_FALLBACK.shared_bytes <= 16384  # Vulkan's minimum maxComputeSharedMemorySize
