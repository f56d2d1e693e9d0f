"""numpy references for every kernel: the ground truth the tests compare against."""
from vkq.reference.rms_norm import rms_norm_reference

__all__ = ["rms_norm_reference"]
