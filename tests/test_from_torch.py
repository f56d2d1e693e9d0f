"""vkq.from_torch: small models quantized with PyTorch's 8da4w flows (dynamic per-token int8
activations, int4 group-wise weights), exported, converted, fused, and compared with
PyTorch's own CPU output.

Three flows, as the installed versions emit them (printed with `print(ep.graph)`):
- torchao's `Int8DynActInt4WeightQuantizer` and its config equivalent
  (`Int8DynamicActivationIntxWeightConfig`): torchao.choose_qparams_affine /
  quantize_affine / dequantize_affine;
- quantized_decomposed's per-token and per-channel-group ops, written out as older torchao's
  8da4w linear emitted them.

The bound against PyTorch (`block_bound`) is interval arithmetic over the model, in float64,
from PyTorch's own intermediate values:
- a linear's result differs by the accumulation rounding of both sides (K·u·Σ|x̂||ŵ| each,
  which also covers the fused kernel's float epilogue: fewer terms, G <= K), plus Σ|ŵ|·(the
  error of its dequantized input x̂);
- x̂ = fakequant(x) moves with x's error e (elementwise), and the row's scale with the row's
  extremes (|q - zp| ≤ 255 steps of a scale that moved by ≤ 2·max(e)/255), plus rounding
  flips: an element whose x·(1/s) + zp lands on a rounding boundary can round one step apart.
  PyTorch's quantize differs from vkq's float32 math exactly there (quantized_decomposed works
  in float64, torchao rounds before adding the zero point): measured 5 in 2,048,000 values of
  randn rows. Each element within the two sides' error of a boundary may move one step s
  (and the clamped extremes, when the zero point itself is that close to a boundary);
- rms_norm, silu, mul and add add a few float32 roundings of their results.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vkq
from vkq.reference.per_token import dequantize_per_token_reference, quantize_per_token_reference

warnings.filterwarnings("ignore", module="torchao")
torchao_quantization = pytest.importorskip("torchao.quantization")

U = 2.0 ** -24  # float32 unit roundoff


class Block(nn.Module):
    """A SwiGLU MLP block: rms_norm, gate and up linears, silu(gate) * up, down linear (with
    bias), residual add."""

    def __init__(self, d: int = 64, hidden: int = 96):
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=True)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def quantizer_flow(model: nn.Module, group_size: int) -> nn.Module:
    return torchao_quantization.Int8DynActInt4WeightQuantizer(groupsize=group_size).quantize(model)


def config_flow(model: nn.Module, group_size: int) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup
    torchao_quantization.quantize_(model, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)))
    return model


FLOWS = {"Int8DynActInt4WeightQuantizer": quantizer_flow,
         "Int8DynamicActivationIntxWeightConfig": config_flow}


def dequantized_weight(linear: nn.Module) -> np.ndarray:
    """The float weights a quantized linear multiplies by, [N, K] float64."""
    w = linear.weight
    if hasattr(linear, "scales"):  # Int8DynActInt4WeightLinear: int8 q, groupwise scales/zeros
        q = w.double()
        n, k = q.shape
        g = linear.scales.shape[-1]
        s = linear.scales.double().reshape(n, g, 1)
        z = linear.zeros.double().reshape(n, g, 1)
        return ((q.reshape(n, g, k // g) - z) * s).reshape(n, k).numpy()
    return w.dequantize().double().numpy()


def capture(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch's float inputs and outputs of each submodule (float64)."""
    seen: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, name=name: seen.update({name + ".in": inp[0].double().numpy(),
                                                      name: out.double().numpy()}))
        for name, m in model.named_children()]
    with torch.no_grad():
        seen["y"] = model(x).double().numpy()
    for h in hooks:
        h.remove()
    return seen


def linear_error(x: np.ndarray, e_x: np.ndarray, w: np.ndarray,
                 w_terms: np.ndarray | None = None) -> np.ndarray:
    """Bound on |vkq - PyTorch| of a dynamically quantized linear whose input is x ± e_x
    (PyTorch's x) and whose weights are w; `w_terms` bounds the magnitude of the terms that
    make up each weight (|q·s| + |z·s| for weights with zero points; default |w|)."""
    xq, s, zp = quantize_per_token_reference(x)
    xhat = dequantize_per_token_reference(xq, s, zp).astype(np.float64)
    s = s.astype(np.float64)[:, None]
    e_xhat = e_x + 2 * e_x.max(axis=-1, keepdims=True)
    # elements that may round to the other side in one of the two computations
    v = x / s + zp[:, None]
    slack = e_xhat / s + 8 * U * (np.abs(v) + 1)
    near = np.abs(v - np.floor(v) - 0.5) <= slack
    # a zero point that may round the other way moves the clamped extremes by one step
    dz = -128 - np.minimum(x.min(axis=-1, keepdims=True), 0) / s
    zp_near = np.abs(dz - np.floor(dz) - 0.5) <= slack.max(axis=-1, keepdims=True)
    near |= zp_near & ((v > 126) | (v < -127))
    aw = np.abs(w)
    terms = aw if w_terms is None else w_terms
    k = w.shape[1]
    return (e_xhat @ aw.T + (near * s) @ aw.T + 2 * k * U * (np.abs(xhat) @ terms.T))


def block_bound(model: Block, t: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = t["norm"]
    e_h = 8 * U * np.abs(h)
    e_g = linear_error(h, e_h, dequantized_weight(model.gate))
    e_u = linear_error(h, e_h, dequantized_weight(model.up))
    g, up = t["gate"], t["up"]
    sg = g / (1 + np.exp(-g))
    e_sg = 1.1 * e_g + 4 * U * np.abs(sg)  # |silu'| <= 1.1
    a = sg * up
    e_a = np.abs(sg) * e_u + np.abs(up) * e_sg + e_sg * e_u + 2 * U * np.abs(a)
    e_d = linear_error(t["down.in"], e_a, dequantized_weight(model.down))
    return e_d + 2 * U * np.abs(t["y"])


def convert(model: nn.Module, x: torch.Tensor, **kw) -> vkq.Graph:
    ep = torch.export.export(model, (x,))
    return vkq.from_torch(ep, **kw)


@pytest.fixture(scope="module")
def blocks():
    """One quantized Block per flow (group size 32), and an input with awkward rows."""
    torch.manual_seed(0)
    out = {}
    for name, flow in FLOWS.items():
        model = Block().eval()
        out[name] = flow(model, 32)
    return out


@pytest.mark.parametrize("flow", sorted(FLOWS))
@pytest.mark.parametrize("rows", [1, 5])
def test_torchao_block_matches_pytorch(device, blocks, flow, rows):
    model = blocks[flow]
    torch.manual_seed(rows)
    x = torch.randn(rows, 64) * 2
    want = capture(model, x)
    bound = block_bound(model, want, x.numpy())
    g = convert(model, x)
    assert len(g.pass_log) == 3, g.nodes                    # gate, up and down fused
    assert not any("dequantize_per_token" in repr(n) or "q4gsw" in repr(n) for n in g.nodes)
    y = g(x=x.numpy())["output0"]
    unfused = convert(model, x, passes=())
    assert not unfused.pass_log
    y0 = unfused(x=x.numpy())["output0"]
    for got in (y, y0):
        err = np.abs(got - want["y"])
        assert np.all(err <= bound), (err.max(), bound[err > bound][:4])
    g.close()
    unfused.close()


def test_three_dimensional_input(device, blocks):
    model = blocks["Int8DynActInt4WeightQuantizer"]
    x = torch.randn(2, 3, 64)
    g = convert(model, x)
    assert len(g.pass_log) == 3
    rows = x.reshape(6, 64)
    want = capture(model, rows)
    bound = block_bound(model, want, rows.numpy())
    err = np.abs(g(x=x.numpy())["output0"].reshape(6, 64) - want["y"])
    assert np.all(err <= bound), err.max()
    g.close()


# -- quantized_decomposed, as older torchao's 8da4w linear emitted it ---------------------------------
import torch.ao.quantization.fx._decomposed  # noqa: E402,F401  (registers quantized_decomposed)

QD = torch.ops.quantized_decomposed


class DecomposedLinear(nn.Module):
    """An 8da4w linear written with quantized_decomposed ops: int4 weights with group-wise
    scales (symmetric, or with integer zero points), dynamic per-token int8 activations."""

    def __init__(self, n: int, k: int, group_size: int, zeros: bool = False):
        super().__init__()
        w = torch.randn(n, k).reshape(n, k // group_size, group_size)
        scales = w.abs().amax(-1) / 7.5
        z = torch.randint(-2, 3, scales.shape) if zeros else torch.zeros(scales.shape, dtype=torch.int64)
        q = torch.clamp(torch.round(w / scales[..., None]) + z[..., None], -8, 7).to(torch.int8)
        self.group_size = group_size
        self.register_buffer("q", q.reshape(n, k))
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, zp = QD.choose_qparams_per_token_asymmetric(x, torch.int8)
        xq = QD.quantize_per_token(x, s, zp, -128, 127, torch.int8)
        xd = QD.dequantize_per_token(xq, s, zp, -128, 127, torch.int8, torch.float32)
        w = QD.dequantize_per_channel_group(self.q, self.scales, self.zeros, -8, 7, torch.int8,
                                            self.group_size, torch.float32)
        return nn.functional.linear(xd, w)

    def dequantized(self) -> tuple[np.ndarray, np.ndarray]:
        """The float weights [N, K], and |q·s| + |z·s| (the terms vkq adds: q·s + (-z·s))."""
        n, k = self.q.shape
        q = self.q.double().reshape(n, -1, self.group_size)
        s, z = self.scales.double()[..., None], self.zeros.double()[..., None]
        w = ((q - z) * s).reshape(n, k).numpy()
        return w, ((q.abs() + z.abs()) * s.abs()).reshape(n, k).numpy()


class TwoLayers(nn.Module):
    def __init__(self, zeros: bool):
        super().__init__()
        self.a = DecomposedLinear(48, 64, 16, zeros)
        self.b = DecomposedLinear(40, 48, 48, zeros)   # one group per row (group = K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(nn.functional.silu(self.a(x)))


@pytest.mark.parametrize("zeros", [False, True])
def test_quantized_decomposed_flow(device, zeros):
    torch.manual_seed(3)
    model = TwoLayers(zeros).eval()
    x = torch.randn(3, 64)
    g = convert(model, x)
    assert [line.split(":")[0] for line in g.pass_log] == ["fuse_quantized_linear"] * 2
    with torch.no_grad():
        h = model.a(x).double().numpy()
        want = model(x).double().numpy()
    e_h = linear_error(x.double().numpy(), np.zeros((3, 64)), *model.a.dequantized())
    sh = h / (1 + np.exp(-h))
    bound = (linear_error(sh, 1.1 * e_h + 4 * U * np.abs(sh), *model.b.dequantized())
             + 2 * U * np.abs(want))
    err = np.abs(g(x=x.numpy())["output0"] - want)
    assert np.all(err <= bound), err.max()
    g.close()


# -- errors ----------------------------------------------------------------------------------------
class Unsupported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(nn.functional.gelu(x)) + torch.tanh(x).softmax(-1)


def test_unsupported_ops_are_listed_in_one_error(device):
    ep = torch.export.export(Unsupported(), (torch.randn(2, 8),))
    with pytest.raises(vkq.TorchExportError) as e:
        vkq.from_torch(ep)
    msg = str(e.value)
    for op in ("aten.gelu.default (1 node)", "aten.tanh.default (2 nodes)",
               "aten.softmax.int (1 node)"):
        assert op in msg, msg
    assert "aten.linear.default" in msg   # and what is supported


def test_float_linear_is_refused_naming_the_node(device):
    ep = torch.export.export(nn.Linear(8, 4), (torch.randn(2, 8),))
    with pytest.raises(vkq.TorchExportError, match="node 'linear'.*int4 group-wise weights"):
        vkq.from_torch(ep)


def test_broadcasting_is_refused(device):
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("c", torch.ones(8))

        def forward(self, x):
            return torch.nn.functional.silu(x) * self.c

    ep = torch.export.export(Scale(), (torch.randn(2, 8),))
    with pytest.raises(vkq.TorchExportError, match="no broadcasting"):
        vkq.from_torch(ep)


def test_bad_arguments(device):
    with pytest.raises(TypeError, match="ExportedProgram"):
        vkq.from_torch(nn.Linear(2, 2))
    dyn = torch.export.Dim("rows")
    ep = torch.export.export(nn.SiLU(), (torch.randn(3, 8),), dynamic_shapes=({0: dyn},))
    with pytest.raises(vkq.TorchExportError, match="dynamic shape"):
        vkq.from_torch(ep)


def test_elementwise_model_runs(device):
    class Elementwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.RMSNorm(16)
            self.register_buffer("c", torch.randn(4, 16))

        def forward(self, x):
            h = self.norm(x)
            return nn.functional.silu(h) * h + self.c

    torch.manual_seed(1)
    model = Elementwise()
    x = torch.randn(4, 16)
    g = convert(model, x)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(g(x=x.numpy())["output0"], want, rtol=1e-5, atol=1e-6)
    assert g.pass_log == []
    g.close()


class OtherActivationQuantization(nn.Module):
    """A linear whose activations are quantized another way than per token asymmetric int8."""

    def __init__(self, mapping: str, per_tensor: bool):
        super().__init__()
        self.inner = quantizer_flow(nn.Sequential(nn.Linear(64, 32, bias=False)), 32)[0]
        self.mapping, self.per_tensor = mapping, per_tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.quantization.quant_primitives import (MappingType, choose_qparams_affine,
                                                           dequantize_affine, quantize_affine)
        block = list(x.shape) if self.per_tensor else [1, x.shape[-1]]
        s, z = choose_qparams_affine(x, getattr(MappingType, self.mapping), block, torch.int8,
                                     -128, 127, torch.finfo(torch.float32).eps, torch.float32,
                                     torch.int32)
        xd = dequantize_affine(quantize_affine(x, block, s, z, torch.int8, -128, 127), block, s,
                               z, torch.int8, -128, 127)
        return self.inner(xd)


@pytest.mark.parametrize("mapping, per_tensor, message", [
    ("SYMMETRIC", False, "must be asymmetric"), ("ASYMMETRIC", True, "must be per token")])
def test_other_activation_quantization_is_refused(device, mapping, per_tensor, message):
    ep = torch.export.export(OtherActivationQuantization(mapping, per_tensor), (torch.randn(4, 64),))
    with pytest.raises(vkq.TorchExportError, match=f"node 'choose_qparams_affine'.*{message}"):
        vkq.from_torch(ep)


def test_import_vkq_does_not_import_torch():
    code = "import sys, vkq; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


class HandWrittenRMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm, as it reads."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def test_hand_written_rms_norm_becomes_one_node(device):
    torch.manual_seed(4)
    norm = HandWrittenRMSNorm(64)
    model = nn.Sequential(norm, quantizer_flow(nn.Sequential(nn.Linear(64, 32, bias=False)), 32))
    x = torch.randn(3, 64) * 3
    g = convert(model, x)
    assert [n.op.name for n in g.nodes] == ["rms_norm", "qta8a_qga4w_linear"], g.nodes
    with torch.no_grad():
        h = norm(x).double().numpy()
        want = model(x).double().numpy()
    # rms_norm on either side: the fp32 sum of K squares (K·u relative), half of that through
    # rsqrt, rsqrt's own ulps and two products; (K + 8)·u covers both sides
    e_h = (64 + 8) * U * np.abs(h)
    bound = linear_error(h, e_h, dequantized_weight(model[1][0])) + 2 * U * np.abs(want)
    err = np.abs(g(input=x.numpy())["output0"] - want)
    assert np.all(err <= bound), err.max()
    g.close()


def test_rms_norm_pattern_with_other_uses_is_left_alone(device):
    class Reused(nn.Module):
        def forward(self, x):
            r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            return x * r, r            # the scale is an output too: not one rms_norm

    ep = torch.export.export(Reused(), (torch.randn(2, 8),))
    with pytest.raises(vkq.TorchExportError, match="aten.rsqrt.default"):
        vkq.from_torch(ep)
