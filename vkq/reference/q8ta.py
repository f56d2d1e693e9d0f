"""q8ta linear reference (docs/design.md §3): int8 activations x int8 per-channel weights -> int8.

    acc[m, n]  = sum_k xq[m, k] * q_w[n, k]                       (exact integers)
    corr[m, n] = acc[m, n] - zp_x * wsum[n],  wsum[n] = sum_k q_w[n, k]
    y          = corr * (s_x * s_w[n]) + bias[n];  relu if asked
    q_out      = clamp(rint(y / s_out) + zp_out, -128, 127)

Two float epilogues are provided:

- ``math="float64"``: the formula above in float64, the mathematical ground truth.
- ``math="float32"``: exactly the float32 operations the GPU kernels run, in the same order,
  so results must match bit for bit. The kernels fold ``1 / s_out`` into per-channel
  constants computed once on the host in float64 and rounded to float32 (a GPU division is
  not correctly rounded in Vulkan, a host-side constant is the same everywhere):

      mult[n] = f32(s_x * s_w[n] / s_out),   offs[n] = f32(bias[n] / s_out)
      v = f32(f32(corr) * mult[n]) + offs[n]       (two roundings: no fused multiply-add)
      v = max(v, 0) for relu;  q = clamp(rint(v) + zp_out, -128, 127)

  ``f32(corr)`` is the correctly rounded conversion of the exact integer. The two epilogues
  agree up to 1 LSB for realistic scales (docs/design.md §3).
"""
from __future__ import annotations

import numpy as np

#: Activations / epilogues this reference and the kernels support.
ACTIVATIONS = ("none", "relu")


def quantize_activation_int8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Static per-tensor affine int8 quantization (docs/design.md §2): clamp(rint(x / s) + zp, -128, 127)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / float(scale)) + int(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def q8ta_accumulators(xq: np.ndarray, q_w: np.ndarray) -> np.ndarray:
    """int32 ``acc[..., n] = sum_k xq[..., k] * q_w[n, k]`` (exact; int32 cannot overflow for
    K < 131072, docs/design.md §1)."""
    acc = np.asarray(xq, dtype=np.int64) @ np.asarray(q_w, dtype=np.int64).T
    return acc.astype(np.int32)


def requant_constants(s_x: float, s_w: np.ndarray, s_out: float,
                      bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``(mult, offs)`` of the float32 epilogue (module docstring)."""
    s_w64 = np.asarray(s_w, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        mult = (float(s_x) * s_w64 / float(s_out)).astype(np.float32)
        if bias is None:
            offs = np.zeros_like(mult)
        else:
            b64 = np.asarray(bias, dtype=np.float32).astype(np.float64)
            offs = (b64 / float(s_out)).astype(np.float32)
    return mult, offs


def _epilogue_float32(corr: np.ndarray, s_w: np.ndarray, bias: np.ndarray | None, s_x: float,
                      s_out: float, zp_out: int, relu: bool) -> np.ndarray:
    mult, offs = requant_constants(s_x, s_w, s_out, bias)
    v = corr.astype(np.float32) * mult  # int64 -> float32: correctly rounded
    v = v + offs                        # float32 + float32, rounded again (no fma)
    if relu:
        v = np.maximum(v, np.float32(0))
    return np.clip(np.rint(v) + np.float32(zp_out), -128, 127).astype(np.int8)


def _epilogue_float64(corr: np.ndarray, s_w: np.ndarray, bias: np.ndarray | None, s_x: float,
                      s_out: float, zp_out: int, relu: bool) -> np.ndarray:
    s_w64 = np.asarray(s_w, dtype=np.float32).astype(np.float64)
    y = corr.astype(np.float64) * (float(s_x) * s_w64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32).astype(np.float64)
    if relu:
        y = np.maximum(y, 0.0)
    return np.clip(np.rint(y / float(s_out)) + zp_out, -128, 127).astype(np.int8)


def q8ta_linear_reference(xq: np.ndarray, q_w: np.ndarray, s_w: np.ndarray,
                          bias: np.ndarray | None, s_x: float, zp_x: int, s_out: float,
                          zp_out: int, activation: str = "none", *,
                          math: str = "float32") -> np.ndarray:
    """int8 ``[..., N]`` result of the q8ta linear layer for int8 ``xq [..., K]`` and int8
    weights ``q_w [N, K]`` with per-channel scales ``s_w [N]`` (module docstring).

    ``math="float32"`` mirrors the GPU epilogue bit for bit; ``math="float64"`` is the exact
    formula (the two may differ by 1 LSB).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    q_w = np.asarray(q_w)
    acc = np.asarray(xq, dtype=np.int64) @ q_w.astype(np.int64).T
    wsum = q_w.astype(np.int64).sum(axis=1)
    corr = acc - int(zp_x) * wsum  # exact in int64; may need 33 bits for large K
    epilogue = {"float32": _epilogue_float32, "float64": _epilogue_float64}[math]
    return epilogue(corr, s_w, bias, s_x, s_out, int(zp_out), activation == "relu")
