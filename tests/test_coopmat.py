"""Cooperative matrices (tensor cores): the coopmat GEMMs against the reference, and what
runs everywhere (compile, manifest, capabilities, routing refusals).

The kernel tests need a device that lists the shapes (the H200); elsewhere (lavapipe has no
cooperative matrices) they skip, saying why. Routing over device profiles with and without
tensor cores is in tests/test_routing.py.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import vkq
from vkq import shaderlib
from vkq.ops import q4gsw_linear as q4
from vkq.ops import contract
from vkq.ops import q8ta_linear as q8
from vkq.ops import qta8a_qga4w_linear as qta
from vkq.execute import weight_buffers
from vkq.reference.qta8a_qga4w import qta8a_qga4w_linear_reference
from vkq.runtime import Buffer
from vkq.reference.q4gsw import q4gsw_linear_reference
from vkq.runtime import UnsupportedDevice
from vkq.runtime.capabilities import CoopMatShape
from test_q4gsw_linear import GUARD, check, fp16_tolerance, make_weight, prepack_exact, run_guarded
from test_q4gsw_linear import SENTINEL as SENTINEL_F
from test_q8ta_linear import (SENTINEL, _run_into, assert_matches, check_exact_accumulators,
                              make_case, q8ta, qparams)
from test_qta8a_linear import check as check_qta
from test_qta8a_linear import device_weight, exact_case
from test_qta8a_linear import make_weight as make_qta_weight
from test_qta8a_linear import run as run_qta

COOPMAT_VARIANTS = sorted(n for n in shaderlib.declared_variants()
                          if "cooperative_matrix" in shaderlib.variant_info(n).requires)
Q4_TILES = sorted({v.values["TILE"] for v in shaderlib.families()["q4gsw_coopmat"].select(ASYM=True)})
Q8_VARIANTS = sorted(v.name for v in shaderlib.families()[q8.COOPMAT_FAMILY].variants)
#: The shapes the H200 lists (docs/design.md §1), for capability checks without one.
H200_SHAPES = (CoopMatShape(16, 16, 16, "float16", "float16", "float32", "float32"),
               CoopMatShape(16, 16, 32, "sint8", "sint8", "sint32", "sint32"))


@pytest.fixture
def tc_device(device):
    """The test device if it runs both coopmat GEMMs, else the test skips saying why."""
    why = q4.coopmat_capable(device.caps)
    if why is None and not q8.coopmat_capable(device.caps):
        why = "the device lists no int8 16x16x32 cooperative matrix"
    if why is not None:
        pytest.skip(f"no tensor cores on {device.caps.name}: {why}")
    return device


# -- everywhere: compile, manifest, capabilities, refusals ----------------------------------------
def test_coopmat_variants_are_compiled_and_the_manifest_says_what_they_need():
    manifest = json.loads((shaderlib.BUILD_DIR / shaderlib.MANIFEST).read_text())
    assert {"coopmat_peak_f16", "coopmat_peak_i8"} <= set(COOPMAT_VARIANTS)
    assert {"q4gsw_coopmat_sym_128x128_p16", "q8ta_linear_coopmat_t128x128"} <= set(COOPMAT_VARIANTS)
    for name, entry in manifest.items():
        needs = {"cooperative_matrix", "vulkan_memory_model"} <= set(entry["requires"])
        assert needs == (name in COOPMAT_VARIANTS), name
        assert (shaderlib.BUILD_DIR / entry["file"]).stat().st_size > 0


def test_a_device_without_tensor_cores_refuses_coopmat_kernels(device):
    if device.caps.cooperative_matrix:
        pytest.skip(f"{device.caps.name} has cooperative matrices")
    with pytest.raises(UnsupportedDevice, match="cooperative_matrix"):
        device.kernel("q4gsw_coopmat_sym_64x64_p16")
    w = make_weight(16, 64, 32, True, seed=1)
    x = np.ones((30, 64), np.float32)
    with pytest.raises(ValueError, match="kernel='coopmat': the device lists no fp16"):
        vkq.linear(x, w, kernel="coopmat", device=device)
    with vkq.trace() as t:  # auto falls back to the fp32 GEMM
        vkq.linear(x, w, device=device)
    assert t.kernels[0].startswith("q4gsw_gemm_")
    with pytest.raises(ValueError, match="kernel='coopmat': the device has no int8 16x16x32"):
        vkq.linear(x, w, act_quant="int8", kernel="coopmat", device=device)
    xq, w8, b8 = make_case(np.random.default_rng(1), 30, 9, 16)
    with pytest.raises(ValueError, match="kernel='coopmat': the device has no int8 16x16x32"):
        q8ta(xq, w8, b8, **qparams(), kernel="coopmat", device=device)
    with vkq.trace() as t:  # and act_quant='int8' to the integer-dot GEMM
        vkq.linear(x, w, act_quant="int8", device=device)
    assert t.kernels[1].startswith("qta8a_gemm_")
    assert not q8.pick_variant(q8.GEMM, device.caps, 30).startswith(q8.COOPMAT_FAMILY)


def test_capabilities_match_listed_shapes_exactly(device):
    caps = dataclasses.replace(device.caps, cooperative_matrix=H200_SHAPES, vulkan_memory_model=True,
                               subgroup_size=32)
    assert caps.has_coopmat(*q4.COOPMAT_SHAPE) and caps.has_coopmat(*q8.COOPMAT_SHAPE)
    assert not caps.has_coopmat(16, 8, 16, "float16", "float32")
    assert not caps.has_coopmat(16, 16, 16, "float16", "float16")  # fp16 accumulators: not listed
    assert q4.coopmat_capable(caps) is None and q8.coopmat_capable(caps)
    sat = dataclasses.replace(caps, cooperative_matrix=tuple(
        dataclasses.replace(s, saturating=True) for s in H200_SHAPES))
    assert not sat.has_coopmat(*q8.COOPMAT_SHAPE)
    assert "32-wide" in q4.coopmat_capable(dataclasses.replace(caps, subgroup_size=64))
    no_model = dataclasses.replace(caps, vulkan_memory_model=False)
    assert q4.coopmat_capable(no_model) is not None and not q8.coopmat_capable(no_model)
    assert caps.summary()["cooperative_matrix"][1] == "sint8 x sint8 -> sint32 16x16x32 (subgroup)"


def test_fp16_exponent_brings_the_largest_weight_below_2_15():
    s = np.array([[0.25, 2.0 ** -20]], np.float32)
    z = np.array([[1.0, 0.0]], np.float32)
    e = q4.fp16_exponent(s, z)
    largest = max(abs(1.0 - 8 * 0.25), abs(1.0 + 7 * 0.25))  # u = 0 and u = 15
    assert 2.0 ** 14 <= largest * 2.0 ** -e < 2.0 ** 15
    assert q4.fp16_exponent(s, None) == math.frexp(8 * 0.25)[1] - 15
    assert q4.fp16_exponent(np.zeros((2, 2), np.float32), None) == 0
    assert q4.fp16_exponent(np.array([[np.inf]], np.float32), None) is None
    assert q4.fp16_exponent(np.array([[1e-38]], np.float32), None) is None  # 2^-E not a float32
    assert q4.fp16_exponent(np.array([[3e38]], np.float32), None) == 116  # w beyond fp32: scaled


def test_coopmat_plans_split_small_batches_and_cover_k():
    small = q4.plan_coopmat(128, 4096, 4096, False, half_params=True)
    big = q4.plan_coopmat(2048, 14336, 4096, True)
    mid = q4.plan_coopmat(512, 4096, 4096, False, half_params=True)
    assert (small.bm, small.bn, mid.bm, mid.bn, big.bm, big.bn) == (64, 64, 128, 128, 256, 128)
    assert mid.splits == 1 and mid.variant == f"q4gsw_coopmat_sym_{q4.COOPMAT_BIG_TILE}_p16"
    assert big.variant == f"q4gsw_coopmat_asym_{q4.COOPMAT_HUGE_TILE}"
    assert small.splits > 1 and big.splits == 1
    assert small.kernels == ["q4gsw_coopmat_prep", small.variant, "q4gsw_gemm_reduce"]
    for k, splits in ((4096, 3), (1320, 7), (64, 5)):
        p = q4.plan_coopmat(200, 64, k, False, "64x64", splits)
        assert p.splits * p.split_chunks >= math.ceil(k / 32) > (p.splits - 1) * p.split_chunks


# -- on tensor cores: q4gsw ------------------------------------------------------------------
def run_recorded(device, pw: q4.Q4gswWeight, x: np.ndarray, bias, **choice) -> tuple[np.ndarray, list[str]]:
    """y of record_linear with forced choices (tiles, splits), and the kernels it ran."""
    m = x.shape[0]
    with device.upload(x) as bx, device.buffer(4 * m * pw.shape[0]) as by, \
            device.upload(bias) as bb:
        with device.batch() as b:
            temps = q4.record_linear(b, pw, bx, by, m, bb, **choice)
            d = b.download(by)
        for buf in temps:
            buf.close()
        return d.result().view(np.float32).reshape(m, -1), b.kernel_names



@pytest.mark.parametrize("params", ["float16", "float32"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k,gs", [(512, 32), (512, 128), (264, 8), (264, 24)])
def test_q4gsw_coopmat_is_bit_exact_on_exact_arithmetic(tc_device, k, gs, symmetric, params):
    # Small-integer x and power-of-two scales: every fp16 operand, product and fp32 sum is
    # exact, so a wrong nibble, group, row or k order shows as a mismatch, not an error
    # hidden under the fp16 bound.
    w, pw = prepack_exact(tc_device, 67, k, gs, symmetric, params)
    rng = np.random.default_rng(k)
    try:
        for m, tile, splits in ((25, None, None), (133, "128x128", 1), (70, "64x64", 3), (130, "64x128", 2),
                                (7, "128x64", 1), (260, "128x128w4", 1), (200, "128x256s", 2),
                                (25, "128x128w16pf1", 1), (133, "128x128sk4", 3), (70, "128x128s16k4", 2),
                                (133, "128x128s16k4pf2", 1), (70, "128x128s16k4pf2", 3),
                                (260, "256x128s16pf2", 1), (133, "256x128s16pf2", 2)):
            x = rng.integers(-4, 5, size=(m, k)).astype(np.float32)
            bias = rng.integers(-8, 9, size=67).astype(np.float32)
            y, names = run_recorded(tc_device, pw, x, bias, kernel="coopmat", coopmat_tile=tile,
                                    coopmat_splits=splits)
            assert names[1].startswith("q4gsw_coopmat_") and names[1].endswith("_p16") == (params == "float16")
            ref = q4gsw_linear_reference(x, w.q, w.scales, w.zeros, gs, bias)
            np.testing.assert_array_equal(y, ref.astype(np.float32), err_msg=f"M={m} {tile} {splits}")
    finally:
        pw.close()


@pytest.mark.parametrize("m,n,k,gs,symmetric", [
    (25, 37, 512, 32, True), (70, 130, 528, 16, False), (200, 67, 1320, 8, True),
    (129, 300, 4096, 128, False), (33, 4096, 4096, 32, True)])
def test_q4gsw_coopmat_within_the_fp16_bound(tc_device, m, n, k, gs, symmetric):
    w = make_weight(n, k, gs, symmetric, seed=m + n)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.linear(x, w, bias, device=tc_device)  # auto: M > 24 -> tensor cores
    assert t.kernels == q4.plan_coopmat(m, n, k, not symmetric, half_params=True).kernels
    check(y, x, w, bias, fp16=True)
    # the bound is not vacuous: the fp32 GEMM is well inside it, and so is this kernel's
    # typical error (fp16 rounding averages out), far below the bound's worst case
    ref = q4gsw_linear_reference(x, w.q, w.scales, w.zeros, gs, bias)
    assert np.sqrt(np.mean((y - ref) ** 2)) < 0.05 * np.sqrt(np.mean(ref ** 2))


def test_q4gsw_coopmat_any_finite_magnitude(tc_device):
    # Rows of x from 1e-30 to 1e20 (far outside fp16) and weights with tiny and huge
    # float32 scales: the per-row and per-weight powers of two keep fp16 in range.
    n, k, gs = 40, 256, 32
    rng = np.random.default_rng(3)
    for scale in (1e-12, 1.0, 1e10):  # |x w| <= ~1e31: the result fits fp32
        w0 = make_weight(n, k, gs, False, seed=4, param_dtype="float32")
        w = vkq.QuantizedWeight(w0.q, w0.scales * np.float32(scale), w0.zeros * np.float32(scale),
                                bits=4, group_size=gs)
        x = rng.standard_normal((30, k)).astype(np.float32)
        x *= (10.0 ** rng.integers(-30, 21, size=(30, 1))).astype(np.float32)
        x[3] = 0.0
        y = vkq.linear(x, w, kernel="coopmat", device=tc_device)
        check(y, x, w, None, fp16=True)
        assert np.all(y[3] == 0.0)


@pytest.mark.parametrize("tile", Q4_TILES)
@pytest.mark.parametrize("m", [7, 133])
def test_q4gsw_coopmat_no_out_of_bounds_access(tc_device, tile, m):
    # N = 67 and K = 1320 (ends inside a word, gs = 8: an odd number of fp16 parameters)
    for splits, sym in ((1, False), (3, True)):
        w = make_weight(67, 1320, 8, sym, seed=m)
        x = np.random.default_rng(m).standard_normal((m, 1320)).astype(np.float32)
        bias = np.random.default_rng(1).standard_normal(67).astype(np.float32)
        y = run_guarded(tc_device, w, x, bias, kernel="coopmat", coopmat_tile=tile, coopmat_splits=splits)
        check(y, x, w, bias, fp16=True)


def test_q4gsw_routing_on_tensor_cores(tc_device):
    w = make_weight(16, 64, 32, True, seed=1)
    x = np.random.default_rng(2).standard_normal((40, 64)).astype(np.float32)
    with vkq.trace() as t:
        vkq.linear(x[:24], w, device=tc_device)                  # the batch GEMV
        vkq.linear(x, w, device=tc_device)                       # tensor cores
        vkq.linear(x, w, kernel="gemm", device=tc_device)        # the fp32 GEMM, forced
    assert t.kernels[0].startswith("q4gsw_gemv_")
    assert t.kernels[1:3] == ["q4gsw_coopmat_prep", "q4gsw_coopmat_sym_64x64_p16"]
    assert t.kernels[-1].startswith("q4gsw_gemm_")


def test_fused_linears_on_tensor_cores(tc_device):
    # gate/up with silu_mul and a residual add after the coopmat GEMM (M = 30 > 24): the
    # fp16 bound of each product, carried through silu (|silu'| <= 1.1) and the product
    g, u = make_weight(40, 64, 32, False, seed=1), make_weight(40, 64, 32, False, seed=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 64)).astype(np.float32)
    bias = np.linspace(-1, 1, 80).astype(np.float32)  # [b_gate, b_up]
    with vkq.trace() as t:
        y = vkq.linear(x, vkq.fuse_linear([g, u], epilogue="silu_mul"), bias, device=tc_device)
    assert "q4gsw_coopmat_prep" in t.kernels and "silu_mul_f32" in t.kernels
    yg = q4gsw_linear_reference(x, g.q, g.scales, g.zeros, 32, bias[:40])
    yu = q4gsw_linear_reference(x, u.q, u.scales, u.zeros, 32, bias[40:])
    tg, tu = fp16_tolerance(x, g, bias[:40]), fp16_tolerance(x, u, bias[40:])
    silu = yg / (1.0 + np.exp(-yg))
    want = silu * yu
    bound = 1.1 * tg * (np.abs(yu) + tu) + np.abs(silu) * tu + 2.0 ** -20 * np.abs(want) + 1e-30
    assert np.all(np.abs(y - want) <= bound)
    r = rng.standard_normal((30, 40)).astype(np.float32)
    y = vkq.linear(x, g, residual=r, device=tc_device)
    want = q4gsw_linear_reference(x, g.q, g.scales, g.zeros, 32) + r
    assert np.all(np.abs(y - want) <= fp16_tolerance(x, g, None) + 2.0 ** -23 * np.abs(want))
    # rms_norm= before the coopmat GEMM: the prep pass reads the normalized rows from scratch
    from vkq.reference import rms_norm_reference
    norm = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.linear(x, g, rms_norm=(norm, 1e-5), device=tc_device)
    assert t.kernels[0].startswith("rms_norm") and "q4gsw_coopmat_prep" in t.kernels, t.kernels
    h = rms_norm_reference(x, norm, 1e-5)
    want = q4gsw_linear_reference(h, g.q, g.scales, g.zeros, 32)
    assert np.all(np.abs(y - want) <= fp16_tolerance(h, g, None) + 2.0 ** -20 * np.abs(want))


# -- on tensor cores: q8ta -----------------------------------------------------------------------
@pytest.mark.parametrize("variant", Q8_VARIANTS)
def test_q8ta_coopmat_gives_identical_results(tc_device, variant):
    rng = np.random.default_rng(7)
    for m, n, k in [(3, 45, 516), (70, 19, 36), (130, 200, 1028), (300, 131, 4096)]:
        x, w, b = make_case(rng, m, n, k)
        p = qparams(activation="relu", s_out=0.02 * np.sqrt(k))
        with vkq.trace() as t:
            y = q8ta(x, w, b, **p, kernel="gemm", device=tc_device, variant=variant)
        assert t.kernels == [variant]
        assert_matches(y, x, w, b, p)


@pytest.mark.parametrize("variant", Q8_VARIANTS)
def test_q8ta_coopmat_accumulators_exact_and_no_writes_past_the_output(tc_device, variant):
    for m in (6, 67):
        check_exact_accumulators(tc_device, variant, m)
    x, w, b = make_case(np.random.default_rng(11), 5, 37, 44)
    words, tail = _run_into(tc_device, variant, x, w, qparams(), b)
    assert np.all(tail == SENTINEL)


def test_q8ta_routes_to_tensor_cores(tc_device):
    rng = np.random.default_rng(1)
    x, w, b = make_case(rng, 300, 9, 16)
    p = qparams()
    with vkq.trace() as t:
        y = vkq.linear(x, w, b, **p, device=tc_device)
    assert t.kernels == ["q8ta_linear_coopmat_t64x64"]  # 3 x 1 tiles of 128: the small tile
    assert_matches(y, x, w, b, p)
    assert q8.pick_variant(q8.GEMM, tc_device.caps, 2048, 4096) == f"q8ta_linear_coopmat_{q8.COOPMAT_BIG_TILE}"
    for kernel, family in (("coopmat", "q8ta_linear_coopmat_"), ("gemm", "q8ta_linear_idot_")):
        with vkq.trace() as t:  # "gemm" keeps the integer-dot GEMM, as for int4 weights
            y = vkq.linear(x, w, b, **p, kernel=kernel, device=tc_device)
        assert t.kernels[0].startswith(family)
        assert_matches(y, x, w, b, p)


# -- on tensor cores: qta8a_qga4w (act_quant="int8") ---------------------------------------------
QTA_TILES = sorted({v.values["TILE"] for v in shaderlib.families()[qta.COOPMAT_FAMILY].variants})


def qta_coopmat(tile: str | None = None) -> dict:
    return dict(kernel="coopmat", gemm_tile=tile)


@pytest.mark.parametrize("tile", QTA_TILES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_qta8a_coopmat_integer_sums_are_exact(tc_device, tile, symmetric):
    """Exact float epilogues (test_qta8a_linear.exact_case): any wrong integer group sum, scale
    or zero-point correction changes the result. K / 32 odd (a padding block), groups of one
    to eight blocks, float32 and fp16 parameters."""
    for gs, k in ((32, 96), (64, 192), (96, 288), (256, 256)):
        x, w, bias = exact_case(70, 19, k, gs, symmetric, seed=gs + k)
        ref = qta8a_qga4w_linear_reference(x, w.q, w.scales, w.zeros, gs, bias).astype(np.float32)
        pw = device_weight(w, tc_device, "float32" if gs == 96 else "float16")
        for m in (1, 2, 3, 5, 7, 70):
            with vkq.trace() as t:
                y = run_qta(x[:m], pw, bias, tc_device, **qta_coopmat(tile))
            assert t.kernels[1].startswith(f"qta8a_coopmat_{'sym' if symmetric else 'asym'}_{tile}")
            np.testing.assert_array_equal(y, ref[:m], err_msg=f"gs={gs} m={m}")
        pw.close()


@pytest.mark.parametrize("m,n,k,gs,symmetric", [
    (133, 200, 4096, 32, True), (5, 70, 320, 64, False), (257, 1024, 1024, 128, True),
    (64, 4096, 4096, 32, False), (33, 96, 14336, 4096 // 2, True)])
def test_qta8a_coopmat_within_the_bound(tc_device, m, n, k, gs, symmetric):
    rng = np.random.default_rng(m + n)
    w = make_qta_weight(n, k, gs, symmetric, seed=k)
    x = rng.standard_normal((m, k)).astype(np.float32) * 3
    bias = rng.standard_normal(n).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.linear(x, w, bias, act_quant="int8", kernel="coopmat", device=tc_device)
    assert t.kernels[1].startswith("qta8a_coopmat_")
    check_qta(y, x, w, bias)
    w.release()


@pytest.mark.parametrize("tile", QTA_TILES)
def test_qta8a_coopmat_no_out_of_bounds_access_and_special_rows(tc_device, tile):
    """Edge tiles (N % 4 != 0: every fragment through shared memory; N % 4 == 0: interior
    fragments stored directly), NaN after x and a sentinel after y; NaN/Inf rows give NaN in
    their row only."""
    rng = np.random.default_rng(5)
    for m, n, k, symmetric in ((7, 70, 96, False), (133, 144, 256, True), (66, 132, 128, False)):
        w = make_qta_weight(n, k, 32, symmetric, seed=n)
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[1, 3], x[2] = np.nan, 0.0
        bias = rng.standard_normal(n).astype(np.float32)
        y = run_qta_guarded(tc_device, w, x, bias, **qta_coopmat(tile))
        check_qta(y, x, w, bias)
        assert np.all(np.isnan(y[1])) and np.array_equal(y[2], bias)
        w.release()


def test_qta8a_routes_to_tensor_cores(tc_device):
    caps = tc_device.caps
    o = contract.get(qta.Qta8aQga4wLinear.name)
    q32, w16 = make_qta_weight(4096, 64, 32, True, seed=1), make_qta_weight(64, 64, 16, True, seed=1)
    w32 = o.prepack(q32, tc_device)
    assert qta.gemm_variant(w32, 512, caps) == f"qta8a_coopmat_sym_{qta.COOPMAT_BIG_TILE}_p16"
    assert qta.gemm_variant(w32, 64, caps) == f"qta8a_coopmat_sym_{qta.COOPMAT_SMALL_TILE}_p16"
    assert qta.gemm_variant(o.prepack(w16, tc_device), 512, caps).startswith("qta8a_gemm_idot_sym_comp_")
    x = np.random.default_rng(2).standard_normal((30, 64)).astype(np.float32)
    for kernel, family in (("auto", "qta8a_coopmat_"), ("gemm", "qta8a_gemm_idot_")):
        with vkq.trace() as t:  # M = 30: the GEMM; "gemm" keeps the integer-dot one
            y = vkq.linear(x, q32, act_quant="int8", kernel=kernel, device=tc_device)
        assert t.kernels[1].startswith(family)
        check_qta(y, x, q32, None)
    with pytest.raises(ValueError, match="kernel=.coopmat.: group_size 16 is not a multiple of 32"):
        vkq.linear(np.ones((30, 64), np.float32), w16, act_quant="int8", kernel="coopmat",
                   device=tc_device)
    q32.release()
    w16.release()


def run_qta_guarded(device, w, x: np.ndarray, bias, **attrs) -> np.ndarray:
    """The op's plan recorded with NaN after x and a sentinel after y."""
    o = contract.get(qta.Qta8aQga4wLinear.name)
    pw = o.prepack(w, device)
    m, k = x.shape
    n = w.shape[0]
    plan = o.plan({"x": contract.TensorSpec.dense((m, k))},
                  dict(attrs, has_bias=bias is not None), pw, device)
    assert list(plan.outputs) == ["y"]
    host = {"x": np.concatenate([x.reshape(-1), np.full(GUARD, np.nan, np.float32)]),
            "y": np.full(m * n + GUARD, SENTINEL_F, np.float32),
            "bias": np.concatenate([bias, np.full(GUARD, np.nan, np.float32)])}
    bufs = {role: device.upload(a) for role, a in host.items()}
    bufs.update({role: Buffer(device, nbytes) for role, nbytes in plan.scratch.items()})
    try:
        with device.batch() as b:
            o.record(b, {"dummy": device.dummy_buffer(), **weight_buffers(pw), **bufs}, plan)
        out = bufs["y"].read(np.float32)
    finally:
        for buf in bufs.values():
            buf.close()
    np.testing.assert_array_equal(out[m * n:], SENTINEL_F)
    return out[: m * n].reshape(m, n)
