"""vkq: Vulkan compute kernels for quantized linear layers.

    import vkq
    w = vkq.quantize_weight(W, bits=4, group_size=32)
    y = vkq.linear(x, w)                       # float32 [..., N]
    y = vkq.rms_norm(x, weight, eps=1e-6)

The default device is the best Vulkan device found (`$VKQ_DEVICE` picks one by index or name
substring); `vkq.Device(...)` opens others, and every op takes `device=`.
"""
import sys

try:
    from vkq.attention import attention, kv_cache, kv_write
    from vkq.functional import add, mul, rms_norm, silu, silu_mul, take_rows
    from vkq.graph import Graph, GraphError, graph
    from vkq.fused import FusedWeight, fuse_linear
    from vkq.linear import linear
    from vkq.llama_ops import RopeTable, argmax, rope
    from vkq.per_token import dequantize_per_token, quantize_per_token
    from vkq.quantized_weight import QuantizedWeight, quantize_weight
    from vkq.runtime import Device, UnsupportedDevice, default_device, set_default_device, trace
    from vkq.shaderlib import ShaderError
    from vkq.tensor import DeviceTensor, to_device
    from vkq.torch_export import TorchExportError, from_torch
except RuntimeError as e:
    # No Vulkan loader: vkq.runtime.vk raises VulkanUnavailable while it is imported (so the
    # class is matched by name: its module never finished loading). `python -m vkq ...`
    # imports this package first, with sys.argv[0] == "-m" (documented -m behaviour): give
    # the command line its one-line error there, not a traceback.
    if type(e).__name__ == "VulkanUnavailable" and sys.argv[:1] == ["-m"]:
        raise SystemExit(f"python -m vkq: error: {e}") from None
    raise

__version__ = "0.1.0"
__all__ = ["Device", "DeviceTensor", "FusedWeight", "Graph", "GraphError", "QuantizedWeight",
           "RopeTable", "ShaderError", "TorchExportError", "UnsupportedDevice", "add", "argmax",
           "attention", "default_device", "dequantize_per_token", "from_torch", "fuse_linear",
           "graph", "kv_cache", "kv_write", "linear", "mul", "quantize_per_token",
           "quantize_weight", "rms_norm", "rope", "set_default_device", "silu", "silu_mul",
           "take_rows", "to_device", "trace"]
