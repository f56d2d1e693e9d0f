"""vkq.linear's routing by weight type and its argument checks (kernels have their own tests)."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq import layouts
from vkq.ops.q4gsw_linear import prepack_q4gsw


def test_prepacked_int4_weight_is_accepted(device):
    rng = np.random.default_rng(0)
    w = vkq.quantize_weight(rng.standard_normal((24, 64)).astype(np.float32), bits=4, group_size=16)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    pw = prepack_q4gsw(layouts.pack_int4_weight(w.q),
                       layouts.pack_group_params(w.scales, None, 16, 64), device)
    assert np.array_equal(vkq.linear(x, pw, device=device), vkq.linear(x, w, device=device))


def test_argument_errors(device):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 32)).astype(np.float32)
    w4 = vkq.quantize_weight(W, bits=4, group_size=32)
    w8 = vkq.quantize_weight(W, bits=8)
    x = rng.standard_normal((1, 32)).astype(np.float32)
    xq = np.zeros((1, 32), np.int8)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        vkq.linear(x, W, device=device)
    with pytest.raises(TypeError, match="must not be given"):
        vkq.linear(x, w4, input_scale=0.1, device=device)
    with pytest.raises(ValueError, match="activation"):
        vkq.linear(x, w4, activation="relu", device=device)
    with pytest.raises(TypeError, match="output_scale, output_zero_point"):
        vkq.linear(xq, w8, input_scale=0.1, input_zero_point=0, device=device)
    with pytest.raises(ValueError, match="kernel must be"):
        vkq.linear(x, w4, kernel="fast", device=device)
