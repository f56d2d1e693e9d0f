"""argmax against numpy's (exact): ties, NaN, infinities, signed zeros, one column, a Llama 3
vocabulary; both reductions (subgroup and shared-memory tree); DeviceTensors and graphs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vkq
from vkq.ops.argmax import pick_variant
from vkq.reference import argmax_reference

VOCAB = 128256  # Llama 3
NAN, INF = np.float32(np.nan), np.float32(np.inf)


def special_rows(n: int = 1000) -> np.ndarray:
    """Rows whose answer depends on the tie and NaN rules, with the contenders in different
    invocations (i, i + 1), in one invocation's strided run (i, i + 256), and far apart."""
    rng = np.random.default_rng(n)
    rows = rng.standard_normal((12, n)).astype(np.float32)
    rows[0, [700, 5, 300]] = 9.0                         # ties: the first wins
    rows[1, [257, 1, 513]] = 9.0                         # one invocation's 1 and 257 and 513
    rows[2, [8, 7]] = 9.0                                # neighbours
    rows[3] = 1.5                                        # all equal: 0
    rows[4, [900, 10]] = NAN                             # the first NaN wins
    rows[5, [999]] = NAN
    rows[5, [3]] = INF                                   # NaN beats +inf
    rows[6] = -INF                                       # all -inf: 0
    rows[7] = -INF
    rows[7, 600] = -3.0e38                               # one finite among -inf
    rows[8] = -1.0
    rows[8, [400, 40]] = [0.0, -0.0]                     # -0.0 == +0.0: the first wins
    rows[9, [n - 1, n - 2]] = INF                        # +inf ties at the end
    rows[10] = -np.abs(rows[10]) - 1
    rows[10, 100] = -0.0                                 # the maximum is -0.0
    rows[11] = np.float32(np.finfo(np.float32).tiny / 4)  # subnormals: all equal
    rows[11, 777] = np.float32(np.finfo(np.float32).tiny / 2)
    return rows


@pytest.mark.parametrize("width", [1, 2, 255, 256, 257, 1000, 4099])
def test_matches_numpy(device, width):
    x = np.random.default_rng(width).standard_normal((3, width)).astype(np.float32)
    with vkq.trace() as t:
        y = vkq.argmax(x, device=device)
    assert t.kernels == [pick_variant(device.caps)]
    assert y.dtype == np.int32 and y.shape == (3,)
    np.testing.assert_array_equal(y, argmax_reference(x))
    np.testing.assert_array_equal(y, np.argmax(x, axis=-1))


def test_ties_nan_and_infinities(device):
    x = special_rows()
    want = np.argmax(x, axis=-1)
    assert list(want[:12]) == [5, 1, 7, 0, 10, 999, 0, 600, 40, 998, 100, 777]
    np.testing.assert_array_equal(vkq.argmax(x, device=device), want)


def test_one_column_is_index_zero(device):
    x = np.array([[NAN], [-INF], [3.0]], np.float32)
    np.testing.assert_array_equal(vkq.argmax(x, device=device), [0, 0, 0])


def test_a_llama3_vocabulary_row(device):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, VOCAB)).astype(np.float32)
    np.testing.assert_array_equal(vkq.argmax(x, device=device), np.argmax(x, axis=-1))
    x[0, [VOCAB - 1, VOCAB - 2, 128000]] = 50.0          # ties near the end
    np.testing.assert_array_equal(vkq.argmax(x, device=device), [128000])
    x[0, VOCAB - 1] = NAN
    np.testing.assert_array_equal(vkq.argmax(x, device=device), [VOCAB - 1])


@pytest.mark.parametrize("subgroup,invocations,variant", [
    (False, 256, "argmax"), (False, 1024, "argmax_wg1024"),
    (True, 256, "argmax_subgroup"), (True, 1024, "argmax_subgroup_wg1024")])
def test_every_variant(device, monkeypatch, subgroup, invocations, variant):
    # the variants of devices with and without subgroup arithmetic and 1024-wide workgroups
    if invocations > device.caps.max_workgroup_invocations or (subgroup and not device.caps.subgroup_arithmetic):
        pytest.skip("this device cannot run that variant")
    monkeypatch.setattr(device, "caps", dataclasses.replace(
        device.caps, subgroup_arithmetic=subgroup, max_workgroup_invocations=invocations))
    x = special_rows(1001 + invocations + subgroup)  # a width no other test plans (plans are cached per shape)
    with vkq.trace() as t:
        y = vkq.argmax(x, device=device)
    assert t.kernels == [variant]
    np.testing.assert_array_equal(y, np.argmax(x, axis=-1))


def test_device_tensors_and_graphs(device):
    x = special_rows(1002)
    yd = vkq.argmax(vkq.to_device(x, device=device))
    assert isinstance(yd, vkq.DeviceTensor) and yd.dtype == np.int32 and yd.shape == (12,)
    np.testing.assert_array_equal(yd.numpy(), np.argmax(x, axis=-1))
    with vkq.graph(device) as g:
        g.output("token", vkq.argmax(g.input("logits", (12, 1002))))
    try:
        for xs in (x, -x, np.random.default_rng(0).standard_normal((12, 1002))):
            out = g(logits=xs)["token"]
            assert out.dtype == np.int32
            np.testing.assert_array_equal(out, np.argmax(xs.astype(np.float32), axis=-1))
    finally:
        g.close()


def test_empty_and_bad_inputs(device):
    assert vkq.argmax(np.zeros((0, 5), np.float32), device=device).shape == (0,)
    with pytest.raises(ValueError, match="argmax of an empty row"):
        vkq.argmax(np.zeros((2, 0), np.float32), device=device)
    with pytest.raises(TypeError, match=r"x must be a dense float32 \[M, N\]"):
        vkq.argmax(np.zeros(5, np.float32), device=device)
    with pytest.raises(TypeError, match="x must be a float array"):
        vkq.argmax(np.zeros((2, 5), np.int32), device=device)
