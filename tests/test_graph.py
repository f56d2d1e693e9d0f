"""Graphs: capture through the public ops, plan an arena, record once, replay.

Replays must equal eager calls bit for bit (same plans, same kernels), intermediates that
live at the same time must never share bytes, barriers may be left out only between
independent dispatches (the suite runs the validation layer's synchronization checks, and a
test proves they catch a missing barrier), every misuse is a clear error, and graphs free
everything they made.
"""
from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest

import vkq
from vkq.graph import GraphError, plan_arena
from vkq.ops.q4gsw_linear import prepack_quantized
from vkq.reference import rms_norm_reference, silu_mul_reference
from vkq.runtime import take_validation_messages
from vkq.runtime.commands import Copy, Dispatch, plan_barriers
from vkq.runtime.env import validation_requested
from vkq.runtime.program import Program

HIDDEN, Q, KV, INTER = 64, 64, 32, 96


def weight(n: int, k: int, seed: int, asym: bool = False, gs: int = 32) -> vkq.QuantizedWeight:
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return vkq.quantize_weight(w, bits=4, group_size=gs, symmetric=not asym)


class Layer:
    """A decoder layer's linear part, small: rms_norm, fused qkv, o + residual, rms_norm,
    fused gate/up with silu, down + residual."""

    def __init__(self, seed: int, asym: bool = False):
        rng = np.random.default_rng(seed)
        self.qkv = vkq.fuse_linear([weight(Q, HIDDEN, seed + 1, asym), weight(KV, HIDDEN, seed + 2, asym),
                                    weight(KV, HIDDEN, seed + 3, asym)])
        self.o = weight(HIDDEN, Q, seed + 4, asym)
        self.gate_up = vkq.fuse_linear([weight(INTER, HIDDEN, seed + 5, asym),
                                        weight(INTER, HIDDEN, seed + 6, asym)], epilogue="silu_mul")
        self.down = weight(HIDDEN, INTER, seed + 7, asym)
        self.n1 = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        self.n2 = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)

    def __call__(self, x):
        h = vkq.rms_norm(x, self.n1, eps=1e-5)
        q, k, v = vkq.linear(h, self.qkv)
        x = vkq.linear(q, self.o, residual=x)
        h = vkq.rms_norm(x, self.n2, eps=1e-5)
        x = vkq.linear(vkq.linear(h, self.gate_up), self.down, residual=x)
        return x, k, v

    def reference(self, x: np.ndarray) -> np.ndarray:
        deq = lambda w: w.dequantize().astype(np.float64)  # noqa: E731
        h = rms_norm_reference(x, self.n1, 1e-5).astype(np.float64)
        q = h @ deq(self.qkv.weight)[:Q].T
        x = x + q @ deq(self.o).T
        h = rms_norm_reference(x.astype(np.float32), self.n2, 1e-5).astype(np.float64)
        gu = h @ deq(self.gate_up.weight).T
        a = silu_mul_reference(gu[:, 0::2], gu[:, 1::2]).astype(np.float64)  # rows alternate
        return x + a @ deq(self.down).T


@pytest.fixture(scope="module")
def layers():
    return [Layer(10), Layer(20, asym=True)]


def capture(layers, rows: int = 1, device=None) -> vkq.Graph:
    with vkq.graph(device) as g:
        x = g.input("x", (rows, HIDDEN))
        for L in layers:
            x, k, v = L(x)
        g.output("y", x)
        g.output("k", k)
    return g


@pytest.mark.parametrize("rows", [1, 3])
def test_replay_equals_eager_bit_for_bit(device, layers, rows):
    g = capture(layers, rows)
    try:
        rng = np.random.default_rng(rows)
        for _ in range(4):  # many replays, new inputs each time
            x = rng.standard_normal((rows, HIDDEN)).astype(np.float32)
            out = g(x=x)
            y, k = x, None
            for L in layers:
                y, k, _ = L(y)
            np.testing.assert_array_equal(out["y"], y)
            np.testing.assert_array_equal(out["k"], k)
            xd = vkq.to_device(x, device=device)  # eager on DeviceTensors: same bits
            yd = xd
            for L in layers:
                yd, _, _ = L(yd)
            np.testing.assert_array_equal(yd.numpy(), y)
        ref = layers[1].reference(layers[0].reference(x).astype(np.float32))
        scale = np.abs(ref).max()
        assert np.allclose(out["y"], ref, rtol=1e-3, atol=1e-3 * scale)
    finally:
        g.close()


def test_outputs_stay_on_device_for_chaining(device, layers):
    g = capture(layers[:1])
    try:
        x = np.random.default_rng(5).standard_normal((1, HIDDEN)).astype(np.float32)
        first = g(x=x, download=False)["y"]
        assert isinstance(first, vkq.DeviceTensor)
        y1 = first.numpy()
        y2 = g(x=first)["y"]                         # a device output as the next input
        np.testing.assert_array_equal(y2, g(x=y1)["y"])
    finally:
        g.close()


def test_replay_returns_only_the_outputs_asked_for(device, layers):
    g = capture(layers[:1])
    try:
        x = np.random.default_rng(6).standard_normal((1, HIDDEN)).astype(np.float32)
        full = g(x=x)
        only_k = g(x=x, outputs=("k",))
        assert list(only_k) == ["k"]
        np.testing.assert_array_equal(only_k["k"], full["k"])
        assert list(g(x=x, outputs="y", download=False)) == ["y"]
        with pytest.raises(GraphError, match=r"unknown outputs \['logits'\]: the graph's outputs are \['k', 'y'\]"):
            g(x=x, outputs=("y", "logits"))
    finally:
        g.close()


def test_arena_never_overlaps_live_tensors():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        iv = []
        for _ in range(n):
            lo = int(rng.integers(0, 10))
            iv.append((lo, lo + int(rng.integers(0, 5)), int(rng.integers(1, 5000))))
        offsets, total = plan_arena(iv)
        for i, j in itertools.combinations(range(n), 2):
            if iv[i][0] <= iv[j][1] and iv[j][0] <= iv[i][1]:  # alive together
                a, b = (offsets[i], offsets[i] + iv[i][2]), (offsets[j], offsets[j] + iv[j][2])
                assert a[1] <= b[0] or b[1] <= a[0], (iv[i], iv[j], a, b)
        assert all(o % 256 == 0 for o in offsets)
        assert total >= max(o + s for o, (_, _, s) in zip(offsets, iv))


def test_arena_reuses_bytes_of_dead_tensors(device, layers):
    g = capture(layers)
    try:
        placed = g._intervals
        assert sum(-(-iv[2] // 256) * 256 for iv, _ in placed) > g.arena_bytes  # reuse happened
        for (a, oa), (b, ob) in itertools.combinations(placed, 2):
            if a[0] <= b[1] and b[0] <= a[1]:
                assert oa + a[2] <= ob or ob + b[2] <= oa
    finally:
        g.close()


def test_independent_dispatches_get_no_barrier(device):
    ws = [weight(32, HIDDEN, s) for s in range(3)]
    with vkq.graph() as g:
        x = g.input("x", (1, HIDDEN))
        outs = [vkq.linear(x, w) for w in ws]       # q, k, v as three separate linears
        g.output("sum", vkq.add(vkq.add(outs[0], outs[1]), outs[2]))
    try:
        barriers = g._program.barriers
        kinds = [type(c).__name__ for c in g._commands]
        # copy in | 3 GEMVs (barrier only before the first) | add | add | copy out
        assert kinds == ["Copy", "Dispatch", "Dispatch", "Dispatch", "Dispatch", "Dispatch", "Copy"]
        assert barriers == [False, True, False, False, True, True, True]
        x = np.random.default_rng(1).standard_normal((1, HIDDEN)).astype(np.float32)
        ref = sum(vkq.linear(x, w) for w in ws)
        np.testing.assert_allclose(g(x=x)["sum"], ref, rtol=1e-6, atol=1e-6)
    finally:
        g.close()


class _FakeKernel:
    def __init__(self, accesses):
        self.info = type("Info", (), {"bindings": [{"access": a} for a in accesses]})


class _Range:
    def __init__(self, key, offset, size):
        self.key, self.offset, self.size, self.nbytes = key, offset, size, size


def test_barrier_plan_by_byte_range():
    k = _FakeKernel(["writeonly", "readonly"])
    d = lambda out, inp: Dispatch(k, (1, 1, 1), [out, inp], b"")  # noqa: E731
    a0, a1, a2 = _Range(1, 0, 256), _Range(1, 256, 256), _Range(1, 512, 256)
    x = _Range(2, 0, 1024)
    cmds = [d(a0, x), d(a1, x),       # disjoint outputs of one buffer: independent
            d(a2, a0),                # reads a0: must wait (read after write)
            d(a0, x),                 # writes a0, which the previous one read: write after read
            Copy(x, _Range(3, 0, 64), 64)]  # reads x only: nothing pending wrote x
    assert plan_barriers(cmds) == [False, False, True, True, False]


@pytest.mark.skipif(not validation_requested(), reason="validation off (VKQ_VALIDATION=0)")
def test_missing_barrier_is_caught_by_sync_validation(device):
    """Guards the guard: a program recorded without its barriers makes the validation
    layer report a hazard, so the suite would catch a barrier the planner wrongly dropped."""
    with vkq.graph() as g:
        x = g.input("x", (4, HIDDEN))
        g.output("z", vkq.add(vkq.add(x, x), x))
    try:
        take_validation_messages()
        p = Program(device, g._commands, barriers=[False] * len(g._commands))
        p.run()
        p.close()
        msgs = take_validation_messages()
        assert any("SYNC-HAZARD" in m for m in msgs), msgs
    finally:
        g.close()


def test_profile_names_every_dispatch(device, layers):
    g = capture(layers[:1])
    try:
        x = np.zeros((1, HIDDEN), np.float32)
        rows = g.profile(x=x)
        assert [r["kernel"] for r in rows] == g.kernel_names
        assert rows[0]["node"].endswith("rms_norm") and all(r["us"] >= 0 for r in rows)
        g(x=x)
        assert g.gpu_ns() > 0 or not device.caps.timestamps
    finally:
        g.close()


def test_replay_errors(device, layers):
    g = capture(layers[:1])
    x = np.zeros((1, HIDDEN), np.float32)
    with pytest.raises(GraphError, match=r"missing \['x'\], unknown \['y'\]"):
        g(y=x)
    with pytest.raises(GraphError, match=r"shape \(1, 64\)"):
        g(x=np.zeros((2, HIDDEN), np.float32))
    with pytest.raises(GraphError, match="must be float32"):
        g(x=np.zeros((1, HIDDEN), np.int32))
    with vkq.Device(str(device.index), validation=False) as other:  # a second logical device
        with pytest.raises(GraphError, match="another device"):
            g(x=vkq.to_device(x, device=other))
    g.close()
    with pytest.raises(GraphError, match="closed"):
        g(x=x)


def test_weight_released_after_capture(device):
    w = weight(32, HIDDEN, 3)
    with vkq.graph() as g:
        g.output("y", vkq.linear(g.input("x", (1, HIDDEN)), w))
    x = np.ones((1, HIDDEN), np.float32)
    g(x=x)
    w.release()
    with pytest.raises(GraphError, match="released after capture"):
        g(x=x)
    g.close()


def test_capture_errors(device, layers):
    w = weight(32, HIDDEN, 4)
    with pytest.raises(GraphError, match="host array"):
        with vkq.graph() as g:
            g.input("x", (1, HIDDEN))
            vkq.linear(np.zeros((1, HIDDEN), np.float32), w)
    with pytest.raises(GraphError, match="no data until the graph runs"):
        with vkq.graph() as g:
            g.input("x", (1, HIDDEN)).numpy()
    with pytest.raises(GraphError, match="no outputs"):
        with vkq.graph() as g:
            vkq.linear(g.input("x", (1, HIDDEN)), w)
    with pytest.raises(ValueError, match="K = 64"):
        with vkq.graph() as g:
            vkq.linear(g.input("x", (1, 72)), w)
    with vkq.graph() as g:
        x = g.input("x", (1, HIDDEN))
        y = vkq.linear(x, w)
        g.output("y", y)
    with pytest.raises(GraphError, match="already built"):
        vkq.linear(y, w)
    with pytest.raises(GraphError, match="declared twice"):
        with vkq.graph() as g2:
            g2.input("x", (1, HIDDEN))
            g2.input("x", (1, HIDDEN))
    pw = prepack_quantized(w, device)  # a weight already on the default device
    with vkq.Device(str(device.index), validation=False) as other:
        with pytest.raises(GraphError, match="another device"):
            with vkq.graph(other) as g3:
                g3.output("y", vkq.linear(g3.input("x", (1, HIDDEN)), pw))
    pw.close()
    g.close()


def test_build_free_cycles_leave_no_live_object(device):
    w = weight(32, HIDDEN, 6)
    norm = np.ones(HIDDEN, np.float32)
    x = np.ones((1, HIDDEN), np.float32)
    vkq.linear(x, w, device=device)  # the weight's device copy and kernels exist before
    with vkq.graph() as g:
        g.output("y", vkq.linear(vkq.rms_norm(g.input("x", (1, HIDDEN)), norm), w))
    g(x=x)
    g.close()
    gc.collect()  # objects earlier tests dropped must not be counted as freed here
    before, reserved = device.live_objects(), device.memory_stats()
    for i in range(1000):
        with vkq.graph() as g:
            g.output("y", vkq.linear(vkq.rms_norm(g.input("x", (1, HIDDEN)), norm), w))
        if i % 100 == 0:
            g(x=x)
        g.close()
    gc.collect()
    assert device.live_objects() == before
    assert device.memory_stats() == reserved  # freed ranges were reused, no block was added


@pytest.mark.parametrize("layout,rows", [("int8_4w", 1), ("int8_4h4w", 5)])
def test_int8_layers_replay_like_eager(device, layout, rows):
    rng = np.random.default_rng(9)
    w1 = vkq.quantize_weight(rng.standard_normal((40, 36)).astype(np.float32), bits=8)
    w2 = vkq.quantize_weight(rng.standard_normal((24, 40)).astype(np.float32), bits=8)
    q1 = dict(input_scale=0.05, input_zero_point=3, output_scale=0.4, output_zero_point=-2)
    q2 = dict(input_scale=0.4, input_zero_point=-2, output_scale=0.9, output_zero_point=1)
    with vkq.graph() as g:
        x = g.input("x", (rows, 36), np.int8, layout=layout)
        h = vkq.linear(x, w1, **q1, activation="relu")
        g.output("y", vkq.linear(h, w2, np.linspace(-1, 1, 24), **q2))
    try:
        for seed in range(3):
            xq = np.random.default_rng(seed).integers(-128, 128, (rows, 36), dtype=np.int8)
            h = vkq.linear(vkq.to_device(xq, layout=layout, device=device), w1, **q1, activation="relu")
            want = vkq.linear(h, w2, np.linspace(-1, 1, 24), **q2).numpy()
            np.testing.assert_array_equal(g(x=xq)["y"], want)
    finally:
        g.close()


def test_params_change_per_replay_without_rerecording(device):
    """A decode loop: the token id is a graph parameter (the parameter buffer), the
    embedding table a captured DeviceTensor; one graph serves every step."""
    rng = np.random.default_rng(4)
    table = rng.standard_normal((50, HIDDEN)).astype(np.float32)
    td = vkq.to_device(table, device=device)
    w = weight(32, HIDDEN, 8)
    with vkq.graph() as g:
        tok = g.param("token")
        g.output("y", vkq.linear(vkq.take_rows(td, tok), w))
    try:
        program = g._program
        for t in (0, 17, 49, 3):
            np.testing.assert_array_equal(g(token=t)["y"], vkq.linear(table[t:t + 1], w))
            assert g._program is program  # nothing re-recorded
        with pytest.raises(GraphError, match=r"must be in \[0, 50\), got 50"):
            g(token=50)
        with pytest.raises(GraphError, match="takes an integer"):
            g(token=1.5)
        with pytest.raises(GraphError, match=r"missing \['token'\]"):
            g()
        td.close()
        with pytest.raises(GraphError, match="captured by this graph has been closed"):
            g(token=1)
    finally:
        g.close()


def test_take_rows_eager(device):
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.testing.assert_array_equal(vkq.take_rows(table, 3, rows=2, device=device), table[3:5])
    np.testing.assert_array_equal(vkq.take_rows(vkq.to_device(table), 9).numpy(), table[9:])
    with pytest.raises(IndexError, match=r"positions \[9, 11\) are out of a table of 10 rows"):
        vkq.take_rows(table, 9, rows=2, device=device)
    with pytest.raises(TypeError, match="index must be an integer"):
        vkq.take_rows(table, 1.0, device=device)


def test_an_output_read_after_later_dispatches_is_synchronized(device):
    """y is written, a dispatch reads it behind a barrier, then the output copy reads y: that
    barrier must make y visible to the copy too (sync validation reported it when barriers
    reached the next command's stage only)."""
    w = weight(32, HIDDEN, 7)
    with vkq.graph() as g:
        y = vkq.linear(g.input("x", (1, HIDDEN)), w)
        g.output("y", y)
        g.output("z", vkq.add(y, y))
    try:
        x = np.random.default_rng(3).standard_normal((1, HIDDEN)).astype(np.float32)
        out = g(x=x)
        np.testing.assert_array_equal(out["z"], out["y"] + out["y"])
    finally:
        g.close()
