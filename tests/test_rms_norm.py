"""rms_norm against the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.ops.rms_norm import pick_variant
from vkq.reference import rms_norm_reference

WIDTHS = [1, 2, 3, 4, 5, 7, 8, 31, 64, 255, 256, 257, 1000, 1023, 4096, 4097]


def _tolerance(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    # fp32 sum of W squares: relative error ~ W * 2^-24 on the mean square, halved by the
    # square root, plus a few ulps for the products; scale by |y|.
    width = x.shape[-1]
    ref = np.abs(rms_norm_reference(x, w))
    return ref * (width * 2.0 ** -24 + 8 * 2.0 ** -24) + 1e-30


@pytest.mark.parametrize("width", WIDTHS)
def test_matches_reference(device, width):
    rng = np.random.default_rng(width)
    x = rng.standard_normal((3, width)).astype(np.float32) * 3
    w = rng.standard_normal(width).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.rms_norm(x, w, eps=1e-6, device=device)
    assert t.kernels == [pick_variant(width)]
    assert np.all(np.abs(y - rms_norm_reference(x, w)) <= _tolerance(x, w))


@pytest.mark.parametrize("width", [4, 5, 4096])
def test_rows_of_zeros(device, width):
    x = np.zeros((2, width), np.float32)
    x[1] = 1.0
    y = vkq.rms_norm(x, np.ones(width, np.float32), eps=1e-5, device=device)
    assert np.array_equal(y[0], np.zeros(width, np.float32))
    np.testing.assert_allclose(y[1], 1 / np.sqrt(1 + 1e-5), rtol=1e-6)


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
