"""Fused linears and the ops between a decoder layer's linears, against numpy references.

Every path is reached: the GEMV with the residual and silu_mul applied in the kernel (one
row, rows of x), the GEMM followed by add / silu_mul dispatches, q/k/v parts as slices of
one buffer (one row, aligned) or taken out by copy_cols.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vkq
from vkq.reference import add_reference, silu_mul_reference


def wq(n: int, k: int, seed: int, asym: bool = False) -> vkq.QuantizedWeight:
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return vkq.quantize_weight(w, bits=4, group_size=32, symmetric=not asym)


def product(x: np.ndarray, w: vkq.QuantizedWeight, bias=None) -> np.ndarray:
    y = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    return y + (0 if bias is None else bias)


def close(a: np.ndarray, b: np.ndarray, x: np.ndarray, k: int) -> None:
    """float32 sums of k terms: error grows with k and the magnitudes summed."""
    tol = 4e-7 * k * (np.abs(x).max() * 3 + 1)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=tol)


KERNELS = [("auto", 1), ("auto", 3), ("gemm", 3), ("auto", 30)]


@pytest.fixture(autouse=True)
def _fp32_gemm(device, monkeypatch):
    """These bounds are float32's: M = 30 runs the fp32 GEMM even on tensor cores (the fused
    linears on the coopmat GEMM, fp16 operands, are checked in tests/test_coopmat.py)."""
    monkeypatch.setattr(device, "caps", dataclasses.replace(device.caps, cooperative_matrix=()))


@pytest.mark.parametrize("kernel,m", KERNELS)
@pytest.mark.parametrize("asym", [False, True])
def test_gate_up_silu(device, kernel, m, asym):
    g, u = wq(40, 64, 1, asym), wq(40, 64, 2, asym)
    fused = vkq.fuse_linear([g, u], epilogue="silu_mul")
    x = np.random.default_rng(m).standard_normal((m, 64)).astype(np.float32)
    bias = np.linspace(-1, 1, 80).astype(np.float32)  # [b_gate, b_up]
    with vkq.trace() as t:
        y = vkq.linear(x, fused, bias, kernel=kernel, device=device)
    want = silu_mul_reference(product(x, g, bias[:40]), product(x, u, bias[40:]))
    close(y, want, x, 64)
    in_kernel = kernel == "auto" and m <= 24
    assert ("silu_mul_f32" in t.kernels) != in_kernel, t.kernels


@pytest.mark.parametrize("kernel,m", KERNELS)
def test_residual(device, kernel, m):
    w = wq(48, 64, 3)
    x = np.random.default_rng(m).standard_normal((m, 64)).astype(np.float32)
    r = np.random.default_rng(m + 1).standard_normal((m, 48)).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.linear(x, w, residual=r, kernel=kernel, device=device)
    close(y, product(x, w) + r, x, 64)
    assert ("add_f32" in t.kernels) != (kernel == "auto" and m <= 24), t.kernels
    # device tensors in and out, same numbers
    yd = vkq.linear(vkq.to_device(x), w, residual=vkq.to_device(r), kernel=kernel)
    np.testing.assert_array_equal(yd.numpy(), y)


@pytest.mark.parametrize("parts,m", [((64, 128, 64), 1), ((64, 32, 32), 1), ((64, 128, 64), 3)])
def test_qkv_parts(device, parts, m):
    ws = [wq(n, 64, 10 + i) for i, n in enumerate(parts)]
    fused = vkq.fuse_linear(ws)
    x = np.random.default_rng(m).standard_normal((m, 64)).astype(np.float32)
    with vkq.trace() as t:
        outs = vkq.linear(x, fused, device=device)
    for o, w in zip(outs, ws):
        np.testing.assert_array_equal(o, vkq.linear(x, w, device=device))
    # one row with part offsets a multiple of 256 bytes: slices of one buffer, no copies
    aligned = m == 1 and all(4 * s % 256 == 0 for s in np.cumsum(parts)[:-1])
    assert ("copy_cols_f32" in t.kernels) != aligned, t.kernels


def test_elementwise_ops(device):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5, 8)).astype(np.float32) * 30
    b = rng.standard_normal((3, 5, 8)).astype(np.float32)
    np.testing.assert_array_equal(vkq.add(a, b, device=device), add_reference(a, b))
    s = vkq.silu_mul(a, device=device)
    np.testing.assert_allclose(s, silu_mul_reference(a[..., :4], a[..., 4:]), rtol=2e-6, atol=1e-30)
    with pytest.raises(ValueError, match="shapes differ"):
        vkq.add(a, b[:2], device=device)
    with pytest.raises(ValueError, match="must be even"):
        vkq.silu_mul(a[..., :3], device=device)


def test_fusion_errors():
    g, u, v = wq(40, 64, 1), wq(32, 64, 2), wq(40, 64, 3, asym=True)
    with pytest.raises(ValueError, match="equal size"):
        vkq.fuse_linear([g, u], epilogue="silu_mul")
    with pytest.raises(ValueError, match="symmetry"):
        vkq.fuse_linear([g, v])
    with pytest.raises(ValueError, match="at least two"):
        vkq.fuse_linear([g])
    with pytest.raises(ValueError, match="residual= applies to a plain linear"):
        vkq.linear(np.ones((1, 64), np.float32), vkq.fuse_linear([g, u]), residual=np.ones((1, 72), np.float32))


# ----------------------------------------------------------------- rms_norm folded into the GEMV
def normed(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    from vkq.reference import rms_norm_reference
    return rms_norm_reference(x, g, eps)


def norm_case(m: int, n: int, k: int, gs: int, asym: bool, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    q = vkq.quantize_weight(w, bits=4, group_size=gs, symmetric=not asym)
    x = (rng.standard_normal((m, k)) * 5).astype(np.float32)
    g = rng.uniform(0.5, 1.5, k).astype(np.float32)
    return q, x, g


def norm_folded(t) -> bool:
    """Whether a trace shows the norm inside the GEMV (else an rms_norm dispatch ran first)."""
    folded = any(name.endswith("_norm") for name in t.kernels)
    assert folded != any(name.startswith("rms_norm") for name in t.kernels), t.kernels
    return folded


# K = 264 and 1032: partial words and tail steps; N = 130 and 40: off every GEMV shape's rows;
# group sizes 8 (component groups), 32, 128 and K (one group per row).
@pytest.mark.parametrize("m,n,k,gs,kernel", [(1, 64, 256, 32, "auto"), (1, 130, 1032, 8, "auto"),
                                             (1, 40, 264, 8, "auto"), (1, 96, 512, 512, "auto"),
                                             (1, 48, 4096, 128, "auto"), (3, 40, 264, 8, "auto"),
                                             (1, 64, 256, 32, "gemm"), (30, 64, 256, 32, "auto")])
@pytest.mark.parametrize("asym", [False, True])
def test_rms_norm_prologue(device, m, n, k, gs, kernel, asym):
    q, x, g = norm_case(m, n, k, gs, asym, seed=m * n + k)
    with vkq.trace() as t:
        y = vkq.linear(x, q, rms_norm=(g, 1e-5), kernel=kernel, device=device)
    h = normed(x, g, 1e-5)
    close(y, product(h, q), h, k)
    assert norm_folded(t) == (m == 1 and kernel == "auto"), t.kernels


def _norm_shapes() -> list:
    from vkq import shaderlib
    from vkq.ops.q4gsw_linear import GemvConfig
    fam = shaderlib.families()["q4gsw_gemv"]
    seen = {}
    for v in fam.select(NORM=True, ASYM=False, GROUP="word", P16=False):
        seen[(v.values["SHAPE"], v.values["SUBGROUP"])] = GemvConfig.from_params(v.params)
    return sorted(seen.items())


@pytest.mark.parametrize("shape,cfg", _norm_shapes(), ids=lambda v: str(v))
def test_rms_norm_prologue_every_shape(device, shape, cfg):
    """Every declared one-row shape with the norm folded in, forced, incl. the shared-memory
    reduction (no shuffles): K = 4128 (129 words) gives every shape full steps and a tail."""
    _, sub = shape
    q, x, g = norm_case(1, 72, 4128, 32, False, seed=5)
    with vkq.trace() as t:
        y = _forced(q, x, g, cfg, sub, device)
    h = normed(x, g, 1e-6)
    close(y, product(h, q), h, 4128)
    assert norm_folded(t), t.kernels


def _forced(q, x, g, cfg, sub, device):
    from vkq.execute import run_op
    from vkq.ops import contract
    op = contract.get("q4gsw_linear")
    call = op.linear_call(x, q, None, {"rms_norm": (g, 1e-6), "device": device})
    attrs = dict(call.attrs, kernel="gemv", gemv_config=cfg, gemv_subgroup=sub)
    return run_op(op.name, call.inputs, attrs, weight=call.weight, constants=call.constants,
                  device=device)["y"]


def test_rms_norm_prologue_with_epilogues_and_graph(device):
    """A decoder layer's use: norm + fused q/k/v parts, norm + gate/up silu_mul, in a graph."""
    q1, x, g = norm_case(1, 64, 256, 32, False, seed=1)
    q2, _, _ = norm_case(1, 64, 256, 32, False, seed=2)
    h = normed(x, g, 1e-5)
    qkv = vkq.fuse_linear([q1, q2])
    gate_up = vkq.fuse_linear([q1, q2], epilogue="silu_mul")
    a, b = vkq.linear(x, qkv, rms_norm=(g, 1e-5), device=device)
    close(a, product(h, q1), h, 256)
    close(b, product(h, q2), h, 256)
    s = vkq.linear(x, gate_up, rms_norm=(g, 1e-5), device=device)
    close(s, silu_mul_reference(product(h, q1), product(h, q2)), h, 256)
    r = np.ones((1, 64), np.float32)
    with vkq.graph(device) as gr:
        xi = gr.input("x", (1, 256), np.float32)
        gr.output("y", vkq.linear(xi, q1, rms_norm=(g, 1e-5), residual=vkq.to_device(r, device=device)))
    for seed in (3, 4):  # replays with new x
        x2 = norm_case(1, 64, 256, 32, False, seed)[1]
        h2 = normed(x2, g, 1e-5)
        close(gr(x=x2)["y"], product(h2, q1) + r, h2, 256)


def test_rms_norm_prologue_range(device):
    """Rows the folded norm sums at its 2^-64 scale: huge rows give NaN (documented; the
    separate rms_norm handles them), NaN rows NaN, zero rows zero; eps below NORM_MIN_EPS
    is not folded."""
    q, x, g = norm_case(1, 64, 256, 32, False, seed=9)
    assert np.isnan(vkq.linear(x * np.float32(1e30), q, rms_norm=(g, 1e-5), device=device)).all()
    xn = x.copy()
    xn[0, 7] = np.nan
    assert np.isnan(vkq.linear(xn, q, rms_norm=(g, 1e-5), device=device)).all()
    assert not vkq.linear(np.zeros_like(x), q, rms_norm=(g, 1e-5), device=device).any()
    small = x * np.float32(1e-3)  # |x| ~ 5e-3: the mean square matters next to eps
    with vkq.trace() as t:
        y = vkq.linear(small, q, rms_norm=(g, 1e-13), device=device)
    assert not norm_folded(t)
    h = normed(small, g, 1e-13)
    close(y, product(h, q), h, 256)
    y = vkq.linear(small, q, rms_norm=(g, 1e-5), device=device)
    h = normed(small, g, 1e-5)
    close(y, product(h, q), h, 256)


def test_rms_norm_prologue_errors(device):
    q, x, g = norm_case(1, 64, 256, 32, False, seed=1)
    with pytest.raises(ValueError, match=r"shape \(256,\)"):
        vkq.linear(x, q, rms_norm=(g[:-8], 1e-5))
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        vkq.linear(x, q, rms_norm=(g, 0.0))
    with pytest.raises(TypeError, match="pair"):
        vkq.linear(x, q, rms_norm=g)
    w8 = vkq.quantize_weight(np.ones((8, 256), np.float32), bits=8)
    with pytest.raises(ValueError, match="rms_norm="):
        vkq.linear(np.ones((1, 256), np.int8), w8, rms_norm=(g, 1e-5), input_scale=1.0,
                   input_zero_point=0, output_scale=1.0, output_zero_point=0)
