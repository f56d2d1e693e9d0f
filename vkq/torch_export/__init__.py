"""`vkq.from_torch`: a `torch.export` program of a quantized model as a vkq graph.

    ep = torch.export.export(model, (x,))          # model quantized with torchao's 8da4w flow
    g = vkq.from_torch(ep)                         # a built vkq.Graph, fusion pass applied
    y = g(x=x.numpy())["output0"]

PyTorch is needed only here (`pip install 'vkq[torch]'`); `import vkq` does not import it.
"""
from vkq.torch_export.convert import TorchExportError, from_torch

__all__ = ["TorchExportError", "from_torch"]
