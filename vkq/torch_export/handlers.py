"""What each supported PyTorch op becomes in a vkq graph (vkq.from_torch).

A handler takes the op's arguments as the converter resolved them (graph values for
activations, numpy arrays for the program's parameters and buffers, Python literals, or the
markers below) and returns what the op's result is in vkq terms. Ops are keyed by their
overload's name ("aten.linear.default"); `HANDLERS` is the list of what vkq supports.

Quantization, as PyTorch writes it and vkq runs it:

- int4 group-wise weights: `dequantize_per_channel_group` / `dequantize_affine` of a constant
  int8 tensor in [-8, 7] is folded here into a `vkq.QuantizedWeight` (`w = (q - z) * s` becomes
  `q * s + zero` with `zero = -z * s`; symmetric weights, z = 0, are exact); the linear that
  reads it becomes `vkq_linear(x, w4)`.
- dynamic per-token asymmetric int8 activations: choose_qparams -> quantize -> dequantize
  become `vkq.quantize_per_token` -> `vkq.dequantize_per_token` (the same math:
  docs/design.md §2), which the fusion pass (vkq.passes) turns, with the linear after them,
  into one fused int8 x int4 linear.

No handler imports torch: dtypes are compared by name ("torch.int8").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from vkq.functional import add as vkq_add
from vkq.functional import mul as vkq_mul
from vkq.functional import rms_norm as vkq_rms_norm
from vkq.functional import silu as vkq_silu
from vkq.graph import Value
from vkq.linear import linear as vkq_linear
from vkq.per_token import dequantize_per_token as vkq_dequantize_per_token
from vkq.per_token import quantize_per_token as vkq_quantize_per_token
from vkq.quantized_weight import QuantizedWeight

#: float32 machine epsilon: the smallest scale of PyTorch's per-token int8 quantization
F32_EPS = float(np.finfo(np.float32).eps)


class TorchExportError(ValueError):
    """An exported program vkq cannot run as it is (the message says what and where)."""


@dataclasses.dataclass
class TokenQParams:
    """The per-token asymmetric int8 parameters PyTorch chose for activations `x`; `result` is
    vkq's (xq, scales, zero_points) once the quantize op has run."""

    x: Any
    result: tuple[Any, Any, Any] | None = None


@dataclasses.dataclass
class QParamPart:
    """Item `index` (0: scales, 1: zero points) of a choose_qparams result."""

    qparams: TokenQParams
    index: int


@dataclasses.dataclass
class Int4Weight:
    """A dequantized constant int4 weight, folded into a vkq.QuantizedWeight."""

    weight: QuantizedWeight


Context = Any  # vkq.torch_export.convert.Converter: .tensor(v) -> graph value or DeviceTensor


def _is(dtype: Any, name: str) -> bool:
    return str(dtype) == f"torch.{name}"


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise TorchExportError(msg)


def _float32_result(dtype: Any, what: str) -> None:
    _require(_is(dtype, "float32"), f"{what} dequantize to float32 only, not {dtype}")


def _activation(v: Any, what: str) -> Value:
    _require(isinstance(v, Value), f"{what} must be a float32 activation of the model, got "
                                   f"{type(v).__name__}")
    return v


# -- int4 weights --------------------------------------------------------------------------------
def _int4_weight(q: Any, scales: Any, zero_points: Any, quant_min: int, quant_max: int,
                 dtype: Any, group_size: int) -> Int4Weight:
    _require(isinstance(q, np.ndarray), "only constant weights (parameters or buffers) are "
                                        "dequantized at conversion")
    _require(_is(dtype, "int8") and q.dtype == np.int8 and q.ndim == 2,
             f"the weight must be an int8 [N, K] tensor holding int4 values, got {q.dtype} "
             f"{list(q.shape)} as {dtype}")
    _require(-8 <= quant_min and quant_max <= 7,
             f"the weight's range [{quant_min}, {quant_max}] is not int4 ([-8, 7]); vkq runs "
             f"int4 group-wise weights")
    n, k = q.shape
    _require(group_size > 0 and k % group_size == 0,
             f"group size {group_size} does not divide K = {k}")
    s = np.asarray(scales, dtype=np.float32).reshape(n, k // group_size)
    zeros = None
    if zero_points is not None and np.any(np.asarray(zero_points) != 0):
        z = np.asarray(zero_points, dtype=np.float32).reshape(n, k // group_size)
        zeros = -(z * s)  # (q - z) * s = q * s + (-z * s)
    try:
        return Int4Weight(QuantizedWeight(q, s, zeros, bits=4, group_size=group_size))
    except (TypeError, ValueError) as e:
        raise TorchExportError(f"the int4 weight does not fit vkq's format: {e}") from None


def dequantize_per_channel_group(cx: Context, w: Any, scales: Any, zero_points: Any,
                                 quant_min: int, quant_max: int, dtype: Any,
                                 group_size: int = 128,
                                 output_dtype: Any = "torch.float32") -> Int4Weight:
    """quantized_decomposed.dequantize_per_channel_group of a constant int4 weight."""
    _float32_result(output_dtype, "weights")
    return _int4_weight(w, scales, zero_points, quant_min, quant_max, dtype, group_size)


# -- per-token activations -----------------------------------------------------------------------
def _per_token_args(x: Any, dtype: Any, quant_min: Any, quant_max: Any) -> None:
    _require(_is(dtype, "int8") and quant_min in (None, -128) and quant_max in (None, 127),
             f"activations quantize to int8 in [-128, 127] only, got {dtype} in "
             f"[{quant_min}, {quant_max}]")


def _token_block(x: Value, block_size: Any) -> None:
    want = [1] * (len(x.shape) - 1) + [x.shape[-1]]
    _require(list(block_size) == want,
             f"activation quantization must be per token (block size {want}), got "
             f"{list(block_size)}")


def choose_qparams_per_token_asymmetric(cx: Context, x: Any,
                                        dtype: Any) -> tuple[QParamPart, QParamPart]:
    _per_token_args(x, dtype, None, None)
    q = TokenQParams(_activation(x, "the quantized input"))
    return QParamPart(q, 0), QParamPart(q, 1)


def choose_qparams_affine(cx: Context, x: Any, mapping_type: Any, block_size: Any,
                          target_dtype: Any, quant_min: Any = None, quant_max: Any = None,
                          eps: Any = None, scale_dtype: Any = None,
                          zero_point_dtype: Any = None, *args: Any,
                          **kwargs: Any) -> tuple[QParamPart, QParamPart]:
    """torchao's choose_qparams_affine, for per-token asymmetric int8 only."""
    x = _activation(x, "the quantized input")
    _require(str(mapping_type).rsplit(".", 1)[-1] == "ASYMMETRIC",
             f"activation quantization must be asymmetric, got {mapping_type}")
    _per_token_args(x, target_dtype, quant_min, quant_max)
    _token_block(x, block_size)
    # torchao's eps=None is float32's smallest normal: only rows whose range is below
    # 255 * F32_EPS (~3e-5) quantize differently (README: vkq.from_torch)
    _require(eps is None or float(eps) <= F32_EPS,
             f"eps {eps} is larger than float32's epsilon, which vkq's per-token scales use")
    _require(scale_dtype is None or _is(scale_dtype, "float32"),
             f"activation scales must be float32, got {scale_dtype}")
    q = TokenQParams(x)
    return QParamPart(q, 0), QParamPart(q, 1)


def _qparams_of(x: Any, scales: Any, zero_points: Any) -> TokenQParams:
    _require(isinstance(scales, QParamPart) and isinstance(zero_points, QParamPart)
             and scales.index == 0 and zero_points.index == 1
             and scales.qparams is zero_points.qparams,
             "activations quantize with the scales and zero points that choose_qparams chose "
             "for them (dynamic per-token quantization); other parameters are not supported")
    return scales.qparams


def quantize_per_token(cx: Context, x: Any, scales: Any, zero_points: Any, quant_min: int,
                       quant_max: int, dtype: Any) -> Value:
    q = _qparams_of(x, scales, zero_points)
    _per_token_args(x, dtype, quant_min, quant_max)
    _require(x is q.x, "activations quantize with parameters chosen for another tensor")
    if q.result is None:
        q.result = vkq_quantize_per_token(x)
    return q.result[0]


def quantize_affine(cx: Context, x: Any, block_size: Any, scale: Any, zero_point: Any,
                    output_dtype: Any, quant_min: Any = None, quant_max: Any = None,
                    *args: Any, **kwargs: Any) -> Value:
    _token_block(_activation(x, "the quantized input"), block_size)
    return quantize_per_token(cx, x, scale, zero_point, quant_min, quant_max, output_dtype)


def dequantize_per_token(cx: Context, xq: Any, scales: Any, zero_points: Any, quant_min: int,
                         quant_max: int, dtype: Any, output_dtype: Any = "torch.float32") -> Value:
    q = _qparams_of(xq, scales, zero_points)
    _per_token_args(xq, dtype, quant_min, quant_max)
    _float32_result(output_dtype, "activations")
    _require(q.result is not None and xq is q.result[0],
             "only activations quantized with these parameters dequantize with them")
    return vkq_dequantize_per_token(*q.result)


def dequantize_affine(cx: Context, x: Any, block_size: Any, scale: Any, zero_point: Any,
                      input_dtype: Any, quant_min: Any = None, quant_max: Any = None, *args: Any,
                      output_dtype: Any = "torch.float32", **kwargs: Any) -> Any:
    """torchao's dequantize_affine: of a constant int4 weight (folded), or of per-token
    quantized activations."""
    if isinstance(x, np.ndarray):
        _require(len(block_size) == 2 and block_size[0] == 1,
                 f"int4 weights are quantized in groups along K (block size [1, group]), got "
                 f"{list(block_size)}")
        _float32_result(output_dtype, "weights")
        return _int4_weight(x, scale, zero_point, -8 if quant_min is None else quant_min,
                            7 if quant_max is None else quant_max, input_dtype, block_size[1])
    return dequantize_per_token(cx, x, scale, zero_point, quant_min, quant_max, input_dtype,
                                output_dtype)


# -- float ops -----------------------------------------------------------------------------------
def linear(cx: Context, x: Any, weight: Any, bias: Any = None) -> Value:
    _require(isinstance(weight, Int4Weight),
             "linear layers need int4 group-wise weights (quantize the model first, e.g. with "
             "torchao's 8da4w flow); this one has a float weight")
    _require(bias is None or isinstance(bias, np.ndarray), "a linear's bias must be a constant")
    return vkq_linear(_activation(x, "a linear's input"), weight.weight, bias=bias)


def _same_shape(cx: Context, op: str, a: Any, b: Any) -> tuple[Any, Any]:
    ta, tb = cx.tensor(a), cx.tensor(b)
    _require(tuple(ta.shape) == tuple(tb.shape),
             f"{op} of shapes {list(ta.shape)} and {list(tb.shape)}: vkq's elementwise ops take "
             f"tensors of one shape (no broadcasting)")
    return ta, tb


def add(cx: Context, a: Any, b: Any, *, alpha: Any = 1) -> Value:
    _require(alpha == 1, f"add with alpha={alpha} is not supported")
    return vkq_add(*_same_shape(cx, "add", a, b))


def mul(cx: Context, a: Any, b: Any) -> Value:
    return vkq_mul(*_same_shape(cx, "mul", a, b))


def silu(cx: Context, x: Any) -> Value:
    return vkq_silu(_activation(x, "silu's input"))


def rms_norm(cx: Context, x: Any, normalized_shape: Any, weight: Any = None,
             eps: Any = None) -> Value:
    x = _activation(x, "rms_norm's input")
    _require(list(normalized_shape) == [x.shape[-1]],
             f"rms_norm over the last axis only ({[x.shape[-1]]}), got {list(normalized_shape)}")
    _require(weight is None or isinstance(weight, np.ndarray),
             "rms_norm's weight must be a constant")
    w = np.ones(x.shape[-1], np.float32) if weight is None else weight
    return vkq_rms_norm(x, w, eps=F32_EPS if eps is None else eps)


def to_float32(cx: Context, x: Any, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
    """aten.to / _to_copy to float32 of a float32 tensor: nothing to do."""
    dtype = kwargs.get("dtype", dtype)
    _require(dtype is None or _is(dtype, "float32"), f"conversion to {dtype} is not supported")
    _require(isinstance(x, np.ndarray) or x.dtype == np.float32,
             f"conversion of {x} is not supported")
    return x


def getitem(cx: Context, seq: Any, index: int) -> Any:
    return seq[index]


def nothing(cx: Context, *args: Any, **kwargs: Any) -> None:
    """Checks of tensor metadata: they hold for what vkq converts."""
    return None


#: the ops vkq.from_torch converts, by their overload's name
HANDLERS: dict[str, Callable[..., Any]] = {
    "aten.linear.default": linear,
    "aten.add.Tensor": add,
    "aten.mul.Tensor": mul,
    "aten.silu.default": silu,
    "aten.rms_norm.default": rms_norm,
    "aten.to.dtype": to_float32,
    "aten._to_copy.default": to_float32,
    "aten._assert_tensor_metadata.default": nothing,
    "getitem": getitem,
    "quantized_decomposed.choose_qparams_per_token_asymmetric.default":
        choose_qparams_per_token_asymmetric,
    "quantized_decomposed.quantize_per_token.default": quantize_per_token,
    "quantized_decomposed.dequantize_per_token.default": dequantize_per_token,
    "quantized_decomposed.dequantize_per_channel_group.default":
        dequantize_per_channel_group,
    "torchao.choose_qparams_affine.default": choose_qparams_affine,
    "torchao.quantize_affine.default": quantize_affine,
    "torchao.dequantize_affine.default": dequantize_affine,
}
