"""What vkq accepts and refuses at its entry points (issue 18): checkpoints from other tools,
inconsistent arguments, sizes over a device's limits, and huge inputs."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.quantized_weight import half_group_params


# ------------------------------------------------------------------ checkpoints from other tools
def test_int8_weights_take_the_full_int8_range():
    q = np.array([[-128, 127, 0, -1]], np.int8)
    w = vkq.QuantizedWeight(q, np.ones(1, np.float32), bits=8)
    assert w.q.min() == -128


@pytest.mark.parametrize("bits", [8, 4])
def test_scales_of_any_finite_value_are_accepted(bits):
    n, k = 3, 16
    shape = (n,) if bits == 8 else (n, 2)
    scales = np.zeros(shape, np.float64)
    scales.flat[1] = -0.25
    scales.flat[2] = -0.0
    q = np.ones((n, k), np.int8)
    w = vkq.QuantizedWeight(q, scales, bits=bits, group_size=None if bits == 8 else 8)
    assert np.array_equal(w.scales, scales.astype(np.float32))
    assert w.dequantize().reshape(-1)[0] == 0.0
    for bad in (np.nan, np.inf, -np.inf, 1e39):  # 1e39: finite in float64, inf in float32
        s = scales.copy()
        s.flat[0] = bad
        with pytest.raises(ValueError, match="scales must be finite"):
            vkq.QuantizedWeight(q, s, bits=bits, group_size=None if bits == 8 else 8)


def test_fp16_parameter_rounding_keeps_zero_and_negative_scales():
    s = np.array([[0.0, -0.375, -0.0, 0.1]], np.float32)
    half_s, _ = half_group_params(s, None)
    assert half_s.tolist() == [[0.0, -0.375, 0.0, np.float32(np.float16(0.1))]]
    assert np.signbit(half_s[0, 2])
    # a non-zero scale that fp16 rounds to 0 (or to a subnormal) would change the weights
    for tiny in (1e-9, 1e-6):
        assert half_group_params(np.array([[1.0, tiny]], np.float32), None) is None
