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
