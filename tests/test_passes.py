"""vkq.passes.fuse_quantized_linear on captured graphs: quantize_per_token ->
dequantize_per_token -> int4 linear becomes one qta8a_qga4w_linear node, by default when a
graph is built; the cases where it must not fire; results before and after the pass; and the
graph's node listing and rewrite guards it relies on."""
from __future__ import annotations

import numpy as np
import pytest

import vkq
from vkq.ops.contract import Call
from vkq.passes import fuse_quantized_linear
from vkq.reference.per_token import dequantize_per_token_reference, quantize_per_token_reference
from vkq.reference.q4gsw import q4gsw_dequantize_reference

U = 2.0 ** -24
K, N = 96, 40
UNFUSED = ["quantize_per_token", "dequantize_per_token", "q4gsw_linear"]


def int4(n: int, k: int, gs: int, seed: int, symmetric: bool = True) -> vkq.QuantizedWeight:
    rng = np.random.default_rng(seed)
    return vkq.quantize_weight(rng.standard_normal((n, k)), bits=4, group_size=gs,
                               symmetric=symmetric)


def ops(g: vkq.Graph) -> list[str]:
    return [n.op.name for n in g.nodes]


def quantized_linear(device, w, m: int, bias=None, passes=None, extra=None) -> vkq.Graph:
    """x -> quantize -> dequantize -> linear(w) as a graph; `extra(g, x, xq, s, zp, xd)` may
    add uses."""
    with vkq.graph(device, passes=passes) as g:
        x = g.input("x", (m, w.shape[1]))
        xq, s, zp = vkq.quantize_per_token(x)
        xd = vkq.dequantize_per_token(xq, s, zp)
        g.output("y", vkq.linear(xd, w, bias=bias))
        if extra is not None:
            extra(g, x, xq, s, zp, xd)
    return g


def reference(x: np.ndarray, w: vkq.QuantizedWeight, bias) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's fake-quantized math in float64, and a bound on either path's distance from it:
    both sum K products of exact x̂ (the int8 values are bit exact) and w in float32 (the
    fused op sums per group in integers and adds G <= K float terms), K·u·Σ|x̂||w| each, with
    |w| replaced by |q·s| + |zero| for asymmetric weights (the terms may cancel), plus the
    bias add."""
    xhat = dequantize_per_token_reference(*quantize_per_token_reference(x)).astype(np.float64)
    w64 = q4gsw_dequantize_reference(w.q, w.scales, w.zeros, w.group_size)
    terms = np.abs(q4gsw_dequantize_reference(w.q, w.scales, None, w.group_size))
    if w.zeros is not None:
        terms += np.abs(np.repeat(w.zeros.astype(np.float64), w.group_size, axis=1))
    want = xhat @ w64.T + (0 if bias is None else bias.astype(np.float64))
    k = x.shape[-1]
    bound = (k + 16) * U * (np.abs(xhat) @ terms.T) + 2 * U * np.abs(want) + 1e-30
    return want, bound


@pytest.mark.parametrize("m", [1, 3, 30])
@pytest.mark.parametrize("symmetric", [True, False])
def test_the_chain_fuses_and_keeps_its_results(device, m, symmetric):
    w = int4(N, K, 32, m, symmetric)
    bias = np.random.default_rng(m).standard_normal(N).astype(np.float32) if m == 3 else None
    x = (np.random.default_rng(m + 10).standard_normal((m, K)) * 3).astype(np.float32)
    x[0, :5] = 0.0                                   # a few exact zeros, and for m > 1 ...
    if m > 1:
        x[1] = 0.0                                   # ... an all-zero row (scale eps)
    fused = quantized_linear(device, w, m, bias)
    unfused = quantized_linear(device, w, m, bias, passes=())
    assert ops(unfused) == UNFUSED and unfused.pass_log == []
    assert ops(fused) == ["qta8a_qga4w_linear"]
    assert fused.pass_log == ["fuse_quantized_linear: 0:quantize_per_token 1:dequantize_per_token "
                              "2:q4gsw_linear -> 2:qta8a_qga4w_linear"]
    assert repr(fused.nodes[0]) == "0:qta8a_qga4w_linear(x=x) -> %0.y"
    want, bound = reference(x, w, bias)
    for g in (fused, unfused):
        err = np.abs(g(x=x)["y"] - want)
        assert np.all(err <= bound), (ops(g), err.max())
        g.close()


def test_every_chain_of_a_graph_fuses(device):
    wa, wb = int4(N, K, 32, 1), int4(24, N, 8, 2)
    x = np.random.default_rng(3).standard_normal((2, K)).astype(np.float32)

    def two_layers(passes):
        with vkq.graph(device, passes=passes) as g:
            h = vkq.linear(vkq.dequantize_per_token(*vkq.quantize_per_token(g.input("x", (2, K)))), wa)
            h = vkq.silu(h)
            g.output("h", h)
            g.output("y", vkq.linear(vkq.dequantize_per_token(*vkq.quantize_per_token(h)), wb))
        return g

    g, plain = two_layers(None), two_layers(())
    assert ops(g) == ["qta8a_qga4w_linear", "silu", "qta8a_qga4w_linear"]
    assert len(g.pass_log) == 2 and g.pass_log[1].endswith("-> 6:qta8a_qga4w_linear")
    assert ops(plain) == UNFUSED + ["silu"] + UNFUSED
    got, base = g(x=x), plain(x=x)
    # the first layer against its reference; the second one's input is the first one's output
    want, bound = reference(x, wa, None)
    silu = want / (1 + np.exp(-want))                   # |silu'| <= 1.1; and its own roundings
    assert np.all(np.abs(got["h"] - silu) <= 1.1 * bound + 4 * U * np.abs(silu))
    for out in (got, base):
        want, bound = reference(out["h"], wb, None)
        assert np.all(np.abs(out["y"] - want) <= bound)
    g.close()
    plain.close()


# -- where it must not fire ----------------------------------------------------------------------
def dequantized_also_an_output(g, x, xq, s, zp, xd):
    g.output("xd", xd)


def dequantized_also_added(g, x, xq, s, zp, xd):
    g.output("z", vkq.add(xd, xd))


@pytest.mark.parametrize("extra", [dequantized_also_an_output, dequantized_also_added])
def test_not_when_the_dequantized_activation_is_used_elsewhere(device, extra):
    w = int4(N, K, 32, 4)
    x = np.random.default_rng(4).standard_normal((3, K)).astype(np.float32)
    g = quantized_linear(device, w, 3, extra=extra)
    plain = quantized_linear(device, w, 3, extra=extra, passes=())
    assert g.pass_log == [] and ops(g) == ops(plain) and ops(g)[:3] == UNFUSED
    for name, value in g(x=x).items():                  # the same graph: the same bits
        np.testing.assert_array_equal(value, plain(x=x)[name])
    g.close()
    plain.close()


def static_parameters(device, w):
    """Per-row scales and zero points given as graph inputs (static quantization)."""
    with vkq.graph(device) as g:
        x = g.input("x", (3, K))
        xq, _, _ = vkq.quantize_per_token(x)
        s, zp = g.input("s", (3,)), g.input("zp", (3,), np.int32)
        g.output("y", vkq.linear(vkq.dequantize_per_token(xq, s, zp), w))
    return g


def given_int8_values(device, w):
    """int8 values from a graph input, quantized elsewhere."""
    with vkq.graph(device) as g:
        x = g.input("x", (3, K))
        _, s, zp = vkq.quantize_per_token(x)
        xq = g.input("xq", (3, K), np.int8)
        g.output("y", vkq.linear(vkq.dequantize_per_token(xq, s, zp), w))
    return g


def another_tensors_parameters(device, w):
    """The int8 values of x with the scales and zero points chosen for x2."""
    with vkq.graph(device) as g:
        x, x2 = g.input("x", (3, K)), g.input("x2", (3, K))
        xq, _, _ = vkq.quantize_per_token(x)
        _, s, zp = vkq.quantize_per_token(x2)
        g.output("y", vkq.linear(vkq.dequantize_per_token(xq, s, zp), w))
    return g


@pytest.mark.parametrize("build", [static_parameters, given_int8_values, another_tensors_parameters])
def test_not_when_the_activations_are_not_dynamically_quantized_per_token(device, build):
    g = build(device, int4(N, K, 32, 5))
    assert g.pass_log == [] and "q4gsw_linear" in ops(g)
    # and the unfused graph runs what it says: (xq - zp) * s @ w.T
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, K)).astype(np.float32)
    feeds = {"x": x, "s": np.full(3, 0.03, np.float32), "zp": np.array([-3, 0, 7], np.int32),
             "xq": rng.integers(-128, 128, (3, K), dtype=np.int8), "x2": 2 * x}
    xq, s, zp = quantize_per_token_reference(x)
    if build is static_parameters:
        s, zp = feeds["s"], feeds["zp"]
    elif build is given_int8_values:
        xq = feeds["xq"]
    else:
        _, s, zp = quantize_per_token_reference(feeds["x2"])
    w = int4(N, K, 32, 5)
    xhat = dequantize_per_token_reference(xq, s, zp).astype(np.float64)
    want = xhat @ w.dequantize().astype(np.float64).T
    bound = (K + 16) * U * (np.abs(xhat) @ np.abs(w.dequantize().astype(np.float64)).T)
    got = g(**{k: v for k, v in feeds.items() if k in g.input_specs})["y"]
    assert np.all(np.abs(got - want) <= bound)
    g.close()


def test_not_when_a_kernel_is_forced_or_a_norm_folded(device):
    with vkq.graph(device) as g:
        x = g.input("x", (1, K))
        xd3 = vkq.dequantize_per_token(*vkq.quantize_per_token(x))
        g.output("k", vkq.linear(xd3, int4(N, K, 32, 9), kernel="gemm"))  # a forced kernel
        xd4 = vkq.dequantize_per_token(*vkq.quantize_per_token(x))
        nw = np.linspace(0.5, 1.5, K).astype(np.float32)  # a norm of the dequantized values:
        g.output("n", vkq.linear(xd4, int4(N, K, 32, 10), rms_norm=(nw, 1e-5)))  # not of x's
    assert g.pass_log == [] and ops(g).count("q4gsw_linear") == 2
    g.close()


@pytest.mark.parametrize("m", [1, 30])
def test_fused_weights_and_a_residual_fuse_too(device, m):
    """q/k/v-style parts, gate/up with silu_mul and a residual: the fused op runs the same
    output stage, so the fused graph gives the bits of the eager act_quant='int8' calls (the
    pass's kernel choice: the int8 GEMV at M = 1), and both graphs stay near the reference."""
    wa, wb, wu, wr = int4(32, K, 32, 6), int4(16, K, 32, 7), int4(24, K, 32, 8), int4(K, K, 32, 11)
    parts = vkq.fuse_linear([wa, wb])
    gate_up = vkq.fuse_linear([wu, int4(24, K, 32, 12)], epilogue="silu_mul")
    x = np.random.default_rng(m).standard_normal((m, K)).astype(np.float32)

    def build(passes):
        with vkq.graph(device, passes=passes) as g:
            xv = g.input("x", (m, K))

            def dq():
                return vkq.dequantize_per_token(*vkq.quantize_per_token(xv))
            a, b = vkq.linear(dq(), parts)
            g.output("a", a)
            g.output("b", b)
            g.output("s", vkq.linear(dq(), gate_up))
            g.output("r", vkq.linear(dq(), wr, residual=xv))
        return g

    fused, plain = build(None), build(())
    assert ops(fused) == ["qta8a_qga4w_linear"] * 3 and len(fused.pass_log) == 3
    assert ops(plain) == UNFUSED * 3
    got, base = fused(x=x), plain(x=x)
    kernel = "gemv" if m == 1 else "auto"
    a, b = vkq.linear(x, parts, act_quant="int8", kernel=kernel, device=device)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["s"], vkq.linear(x, gate_up, act_quant="int8", kernel=kernel,
                                                       device=device))
    np.testing.assert_array_equal(got["r"], vkq.linear(x, wr, residual=x, act_quant="int8",
                                                       kernel=kernel, device=device))
    for out in (got, base):
        for role, w in (("a", wa), ("b", wb)):
            want, bound = reference(x, w, None)
            assert np.all(np.abs(out[role] - want) <= bound), role
        want, bound = reference(x, wr, None)
        assert np.all(np.abs(out["r"] - (want + x)) <= bound + 2 * U * np.abs(want + x))
    fused.close()
    plain.close()


def test_the_quantize_node_stays_when_its_outputs_are_used(device):
    w = int4(N, K, 32, 10)
    x = np.random.default_rng(10).standard_normal((2, K)).astype(np.float32)
    g = quantized_linear(device, w, 2, extra=lambda g, x, xq, s, zp, xd: g.output("xq", xq))
    assert ops(g) == ["quantize_per_token", "qta8a_qga4w_linear"]
    assert g.pass_log == ["fuse_quantized_linear: 1:dequantize_per_token 2:q4gsw_linear "
                          "-> 2:qta8a_qga4w_linear"]
    out = g(x=x)
    np.testing.assert_array_equal(out["xq"], quantize_per_token_reference(x)[0])
    want, bound = reference(x, w, None)
    assert np.all(np.abs(out["y"] - want) <= bound)
    g.close()


# -- running the pass by hand, and the graph's guards ------------------------------------------------
def test_the_pass_by_hand_and_the_replace_guards(device):
    w = int4(N, K, 32, 11)
    with vkq.graph(device, passes=()) as g:
        x = g.input("x", (1, K))
        xq, s, zp = vkq.quantize_per_token(x)
        xd = vkq.dequantize_per_token(xq, s, zp)
        g.output("y", vkq.linear(xd, w))
        quantize, dequantize, linear = g.nodes
        with pytest.raises(vkq.GraphError, match=r"0:quantize_per_token: its output %0.xq is still used"):
            g.replace([quantize], linear.op, Call({"x": x}, {}), keep={})
        assert fuse_quantized_linear(g) == 1
        assert fuse_quantized_linear(g) == 0           # nothing left to fuse
        assert ops(g) == ["qta8a_qga4w_linear"]
    with pytest.raises(vkq.GraphError, match="already built"):
        g.replace(g.nodes, linear.op, Call({"x": x}, {}), keep={})
    g.close()
