"""rms_norm against the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.ops.rms_norm import pick_variant
from vkq.reference import rms_norm_reference

WIDTHS = [1, 2, 3, 4, 5, 7, 8, 31, 64, 255, 256, 257, 1000, 1023, 4096, 4097]


def _tolerance(x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    # fp32 sum of W squares: relative error ~ W * 2^-24 on the mean square, halved by the
    # square root, plus a few ulps for the products; scale by |y|. (The kernel's scaling of
    # each row by a power of two is exact and adds nothing.)
    width = x.shape[-1]
    # + inversesqrt's own error: Vulkan allows 2 ulp (NVIDIA's is not correctly rounded).
    ref = np.abs(rms_norm_reference(x, w, eps))
    return ref * (width * 2.0 ** -24 + 12 * 2.0 ** -24) + 1e-30


@pytest.mark.parametrize("width", WIDTHS)
def test_matches_reference(device, width):
    rng = np.random.default_rng(width)
    x = rng.standard_normal((3, width)).astype(np.float32) * 3
    w = rng.standard_normal(width).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.rms_norm(x, w, eps=1e-6, device=device)
    assert t.kernels == [pick_variant(width, device.caps)]
    assert np.all(np.abs(y - rms_norm_reference(x, w)) <= _tolerance(x, w))


@pytest.mark.parametrize("width", [4, 5, 4096])
def test_rows_of_zeros(device, width):
    x = np.zeros((2, width), np.float32)
    x[1] = 1.0
    y = vkq.rms_norm(x, np.ones(width, np.float32), eps=1e-5, device=device)
    assert np.array_equal(y[0], np.zeros(width, np.float32))
    np.testing.assert_allclose(y[1], 1 / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("width", [5, 256, 4096])
def test_huge_and_tiny_rows(device, width):
    """Rows whose squares overflow fp32 (|x| >= ~1.8e19; they used to come out as 0) or
    underflow it, up to |x| = 3e38 and down to 1e-30, with the kernel's scaling by a power of
    two near the row's max |x|; and a row with one huge value among small ones."""
    rng = np.random.default_rng(width)
    mags = [1e19, 2e19, 1e25, 1e30, 1e35, 1e37, 3e38, 1e-30, 1e-37, 1.0]
    # |values| in [0.5, 1) * magnitude: no subnormal inputs (GPUs may flush those to zero,
    # which Vulkan allows; this test is about the range of the sum of squares)
    signs = rng.choice([-1.0, 1.0], (len(mags) + 1, width))
    x = rng.uniform(0.5, 1, (len(mags) + 1, width)) * signs * np.array(mags + [1.0])[:, None]
    x[-1, width // 2] = 1e36  # one huge value: the rest is ~1e-36 of it
    x = x.astype(np.float32)
    w = rng.standard_normal(width).astype(np.float32)
    for eps in (1e-6, 1e-36):
        y = vkq.rms_norm(x, w, eps=eps, device=device)
        ref = rms_norm_reference(x, w, eps)
        assert np.all(np.isfinite(ref)) and np.all(np.abs(ref[:7]).max(axis=1) > 0.1)
        assert np.all(np.abs(y - ref) <= _tolerance(x, w, eps)), \
            f"eps={eps}: worst rows {np.argsort(-np.max(np.abs(y - ref), axis=1))[:3]}"


def test_tiny_eps_still_counts_for_tiny_rows(device):
    # mean square 1e-40 (an fp32 subnormal) next to eps = 1e-36: the scaled sum keeps it
    x = np.full((1, 64), 1e-20, np.float32)
    y = vkq.rms_norm(x, np.ones(64, np.float32), eps=1e-36, device=device)
    ref = rms_norm_reference(x, np.ones(64, np.float32), 1e-36)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert abs(ref[0, 0] - 1e-20 / np.sqrt(1e-40 + 1e-36)) < 1e-7 * ref[0, 0]


def test_inf_and_nan_rows_follow_the_reference(device):
    x = np.ones((3, 8), np.float32)
    x[0, 2] = np.inf
    x[1, 5] = np.nan
    w = np.ones(8, np.float32)
    y = vkq.rms_norm(x, w, device=device)
    ref = rms_norm_reference(x, w)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(ref[0, 2]) and np.all(ref[0, [0, 1, 3]] == 0) and np.all(np.isnan(ref[1]))
    # within inversesqrt's 2 ulp (Vulkan's bound; lavapipe is exact, NVIDIA is not)
    np.testing.assert_allclose(y[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=4 * 2.0 ** -23, atol=0)


def test_reference_scaling_is_the_textbook_formula():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 33)) * np.array([[1.0], [1e-3], [1e100], [1e-100]])
    w = rng.standard_normal(33)
    for eps in (1e-6, 1e-30):
        plain = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
        ok = np.isfinite(plain).all(axis=1) & (np.abs(x).max(axis=1) < 1e150)  # no overflow
        np.testing.assert_allclose(rms_norm_reference(x, w, eps)[ok], plain[ok].astype(np.float32),
                                   rtol=1e-6)


def test_batch_dims_and_many_rows(device):
    x = np.random.default_rng(1).standard_normal((2, 3, 40)).astype(np.float32)
    w = np.ones(40, np.float32)
    y = vkq.rms_norm(x, w, device=device)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, rms_norm_reference(x, w), rtol=1e-5, atol=1e-6)


def test_bad_inputs(device):
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        vkq.rms_norm(x, np.ones(7, np.float32), device=device)
    with pytest.raises(TypeError, match="float"):
        vkq.rms_norm(x.astype(np.int32), np.ones(8, np.float32), device=device)
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            vkq.rms_norm(x, np.ones(8, np.float32), eps=eps, device=device)
