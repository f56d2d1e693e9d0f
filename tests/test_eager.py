"""Eager calls on DeviceTensors join the device's open batch (Device.open_batch): no submit
per call, results as if each call ran at once, and memory of a closed tensor never reused
before the work that reads it has run."""
from __future__ import annotations

import numpy as np

import vkq
from vkq.runtime import device as device_module
from vkq.runtime.memory import size_class


def weight(n: int, k: int, seed: int) -> vkq.QuantizedWeight:
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) / 8
    return vkq.quantize_weight(w, bits=4, group_size=32)


def test_chain_with_closes_equals_numpy_calls(device):
    w, norm = weight(64, 64, 1), np.ones(64, np.float32)
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    steps = 2 * device_module.OPEN_BATCH_DISPATCHES + 7  # several flushes, one partial
    want = x
    for _ in range(steps):
        want = vkq.rms_norm(vkq.linear(want, w, device=device), norm, device=device)
    h = vkq.to_device(x, device=device)
    for _ in range(steps):
        y = vkq.linear(h, w)
        h.close()       # freed before the call that reads it is even submitted
        h = vkq.rms_norm(y, norm)
        y.close()
        vkq.add(h, h)   # dropped at once: its memory returns to the pool while pending
    np.testing.assert_array_equal(h.numpy(), want)


def test_calls_are_submitted_in_batches(device):
    w = weight(64, 64, 3)
    h = vkq.to_device(np.ones((1, 64), np.float32), device=device)
    vkq.linear(h, w).numpy()  # the weight's upload (its own submissions on a discrete GPU)
    device.synchronize()
    before = device._serial
    for _ in range(device_module.OPEN_BATCH_DISPATCHES * 2):
        h = vkq.linear(h, w)
    assert device._serial - before == 2  # two full batches submitted, not 64 submissions
    h.numpy()
    assert device._open is None


def test_device_closes_with_calls_pending():
    with vkq.Device() as dev:
        w = weight(64, 64, 4)
        h = vkq.linear(vkq.to_device(np.ones((1, 64), np.float32), device=dev), w)
        assert dev._open is not None
    assert h.closed  # closed with its device, after the pending work was submitted and ran


def test_memory_of_a_pending_call_is_freed_only_after_it_ran(device):
    w = weight(64, 64, 5)
    x = vkq.to_device(np.ones((1, 64), np.float32), device=device)
    device.synchronize()
    y = vkq.linear(x, w)                      # recorded in the open batch, not submitted
    buf = x.buffer
    pool = device._pool(buf.host_visible)
    free = lambda: pool._free.get(size_class(buf.size), [])  # noqa: E731  (this size's free ranges)
    x.close()
    assert (buf._block, buf.offset) not in free()   # the pending call still reads it
    device.synchronize()
    assert (buf._block, buf.offset) in free()       # returned once that call has run
    y.close()
