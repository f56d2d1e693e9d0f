"""vkq.mul and vkq.silu (the elementwise ops vkq.from_torch maps aten.mul and aten.silu to)
against their references: eagerly on numpy and DeviceTensors, and inside a graph."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.reference.elementwise import mul_reference, silu_reference


@pytest.mark.parametrize("shape", [(7,), (3, 37), (2, 3, 5), (1, 1)])
def test_mul_is_exact(device, shape):
    rng = np.random.default_rng(sum(shape))
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(vkq.mul(a, b, device=device), mul_reference(a, b))


@pytest.mark.parametrize("shape", [(7,), (3, 37), (2, 3, 5)])
def test_silu_within_ulps(device, shape):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.flat[:3] = [-200.0, 0.0, 200.0]     # e^-x overflows to inf: -0; and the identity end
    got = vkq.silu(x, device=device)
    want = silu_reference(x)
    # as silu_mul's test (test_fused.py): an error d in exp(-x) moves x / (1 + exp(-x)) by at
    # most d relatively, plus the division's rounding; the Vulkan spec allows exp 3 + 2|x| ulp
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
    assert got.flat[0] == 0 and got.flat[1] == 0 and got.flat[2] == 200.0


def test_device_tensors_and_graphs(device):
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal((4, 9)).astype(np.float32) for _ in range(2))
    out = vkq.mul(vkq.silu(vkq.to_device(a, device=device)), vkq.to_device(b, device=device))
    assert isinstance(out, vkq.DeviceTensor)
    want = mul_reference(silu_reference(a), b)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-30)
    with vkq.graph(device) as g:
        x, y = g.input("a", (4, 9)), g.input("b", (4, 9))
        g.output("z", vkq.mul(vkq.silu(x), y))
    np.testing.assert_array_equal(g(a=a, b=b)["z"], out.numpy())
    g.close()


def test_shape_mismatch_is_refused(device):
    with pytest.raises(ValueError, match="mul: shapes differ"):
        vkq.mul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), device=device)
    with pytest.raises(TypeError, match="float"):
        vkq.silu(np.ones(3, np.int32), device=device)
