"""A thin, generic Vulkan compute runtime: devices, buffers, kernels, batched dispatches.

Nothing here knows about any operator: op modules (`vkq.ops`) choose variants, pack data
and compute workgroup counts; the runtime only creates, binds, records and times.
"""
from vkq.runtime.batch import CommandBatch, Download
from vkq.runtime.buffer import Buffer
from vkq.runtime.capabilities import Capabilities
from vkq.runtime.device import Device, UnsupportedDevice, default_device, set_default_device
from vkq.runtime.instance import Instance, choose_device, take_validation_messages
from vkq.runtime.kernel import Kernel
from vkq.runtime.trace import Trace, trace
from vkq.runtime.vk import VulkanError, VulkanUnavailable

__all__ = ["Buffer", "Capabilities", "CommandBatch", "Device", "Download", "Instance", "Kernel",
           "UnsupportedDevice", "VulkanError", "VulkanUnavailable", "choose_device",
           "default_device", "set_default_device", "Trace", "trace",
           "take_validation_messages"]
