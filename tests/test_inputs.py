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


# ------------------------------------------------------------------ inconsistent arguments
def test_quantize_weight_refuses_arguments_int8_ignores():
    W = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="per output channel.*group_size=32"):
        vkq.quantize_weight(W, bits=8, group_size=32)
    with pytest.raises(ValueError, match="per output channel"):
        vkq.QuantizedWeight(np.zeros((4, 64), np.int8), np.ones(4), bits=8, group_size=32)
    with pytest.raises(ValueError, match="param_dtype applies to int4"):
        vkq.quantize_weight(W, bits=8, param_dtype="float16")
    # group_size = K is one group per row, which is what int8 weights are: accepted by both
    a = vkq.quantize_weight(W, bits=8, group_size=64)
    b = vkq.QuantizedWeight(a.q, a.scales, bits=8, group_size=64)
    assert np.array_equal(a.q, vkq.quantize_weight(W, bits=8).q) and b.group_size == 64


def _layers():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 32)).astype(np.float32)
    return (vkq.quantize_weight(W, bits=4, group_size=32),
            vkq.quantize_weight(W, bits=4, group_size=32, symmetric=False),
            vkq.quantize_weight(W, bits=8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_bias_is_refused_by_every_layer_alike(device, bad):
    bias = np.zeros(8, np.float32)
    bias[3] = bad
    x = np.ones((2, 32), np.float32)
    xq = np.ones((2, 32), np.int8)
    q8 = dict(input_scale=0.1, input_zero_point=0, output_scale=0.1, output_zero_point=0)
    w4s, w4a, w8 = _layers()
    calls = [lambda: vkq.linear(x, w4s, bias, device=device),
             lambda: vkq.linear(x, w4a, bias, device=device),
             lambda: vkq.linear(x[:1], w4s, bias, kernel="gemv", device=device),
             lambda: vkq.linear(xq, w8, bias, **q8, device=device)]
    messages = set()
    for call in calls:
        with pytest.raises(ValueError, match="bias must be finite") as e:
            call()
        messages.add(str(e.value))
    assert len(messages) == 1
    with vkq.to_device(x, device=device) as xd:  # device-resident input: same rule
        with pytest.raises(ValueError, match="bias must be finite"):
            vkq.linear(xd, w4s, bias)


def test_device_tensor_of_the_other_activation_kind_says_what_to_pass(device):
    w4, _, w8 = _layers()
    q8 = dict(input_scale=0.1, input_zero_point=0, output_scale=0.1, output_zero_point=0)
    x = np.ones((1, 32), np.float32)
    xq = np.ones((1, 32), np.int8)
    for layout in ("int8_4w", "int8_4h4w"):
        with vkq.to_device(xq, layout=layout, device=device) as xd:
            with pytest.raises(vkq.layouts.LayoutError,
                               match=rf"int4 weight-only linear takes float32 activations; this "
                                     rf"DeviceTensor is int8 in layout '{layout}': pass "
                                     rf"vkq.to_device\(x_float32\) instead"):
                vkq.linear(xd, w4)
    with vkq.to_device(x, device=device) as xd:
        with pytest.raises(vkq.layouts.LayoutError,
                           match=r"int8 linear takes int8 activations .*this DeviceTensor is "
                                 r"float32 in layout 'dense': pass vkq.to_device\(xq, "
                                 r"layout='int8_4w' or 'int8_4h4w'\)"):
            vkq.linear(xd, w8, **q8)
    with vkq.to_device(xq, device=device) as xd:  # int8, but unpacked ("dense")
        with pytest.raises(vkq.layouts.LayoutError, match="int8 in layout 'dense'"):
            vkq.linear(xd, w8, **q8)
        with pytest.raises(TypeError, match="int8 in layout 'dense'.*x_float32"):
            vkq.linear(xd, w4)
