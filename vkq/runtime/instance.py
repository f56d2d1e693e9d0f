"""The Vulkan instance, the validation layer's messenger, and physical-device discovery."""
from __future__ import annotations

import threading
from typing import Any

from vkq.runtime.capabilities import TYPE_PREFERENCE, Capabilities, read_capabilities
from vkq.runtime.env import device_selector, validation_requested
from vkq.runtime.vk import (VulkanUnavailable, check, cstrings, ffi, instance_proc, lib, new,
                            result_name, to_str)

VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation"

# Validation messages from every instance of the process: a test fails on any of them,
# whichever device produced it.
_messages: list[str] = []
_messages_lock = threading.Lock()


def take_validation_messages() -> list[str]:
    """Validation-layer messages (warnings and errors) since the last call, from all instances."""
    with _messages_lock:
        msgs = _messages[:]
        _messages.clear()
    return msgs


def _available_layers() -> set[str]:
    count = ffi.new("uint32_t*")
    lib.vkEnumerateInstanceLayerProperties(count, ffi.NULL)
    arr = ffi.new("VkLayerProperties[]", count[0])
    lib.vkEnumerateInstanceLayerProperties(count, arr)
    return {to_str(arr[i].layerName) for i in range(count[0])}


def _available_extensions() -> set[str]:
    count = ffi.new("uint32_t*")
    lib.vkEnumerateInstanceExtensionProperties(ffi.NULL, count, ffi.NULL)
    arr = ffi.new("VkExtensionProperties[]", count[0])
    lib.vkEnumerateInstanceExtensionProperties(ffi.NULL, count, arr)
    return {to_str(arr[i].extensionName) for i in range(count[0])}


class Instance:
    """Owns the VkInstance and, in validation mode, the debug messenger.

    Validation messages are collected for `take_validation_messages()` (the callback must
    return 0 and may not raise: the binding swallows exceptions there, docs/design.md §1).
    """

    def __init__(self, validation: bool | None = None):
        self._keep: list[Any] = []
        self.validation = validation_requested() if validation is None else validation
        layers, extensions = [], []
        available_ext = _available_extensions()
        if self.validation:
            if VALIDATION_LAYER not in _available_layers():
                raise VulkanUnavailable(
                    f"VKQ_VALIDATION is on but {VALIDATION_LAYER} is not installed "
                    "(Debian/Ubuntu: `sudo apt-get install vulkan-validationlayers`)")
            layers.append(VALIDATION_LAYER)
            extensions.append("VK_EXT_debug_utils")
        flags = 0
        if "VK_KHR_portability_enumeration" in available_ext:  # lists portability drivers too
            extensions.append("VK_KHR_portability_enumeration")
            flags |= lib.VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR
        k = self._keep
        app = new("VkApplicationInfo", k, sType=lib.VK_STRUCTURE_TYPE_APPLICATION_INFO,
                  pApplicationName=cstrings(["vkq"], k)[0], pEngineName=cstrings(["vkq"], k)[0],
                  apiVersion=(1 << 22) | (3 << 12))
        info = new("VkInstanceCreateInfo", k, sType=lib.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                   flags=flags, pApplicationInfo=app,
                   enabledLayerCount=len(layers), ppEnabledLayerNames=cstrings(layers, k),
                   enabledExtensionCount=len(extensions),
                   ppEnabledExtensionNames=cstrings(extensions, k))
        handle = ffi.new("VkInstance*")
        code = lib.vkCreateInstance(info, ffi.NULL, handle)
        if code == lib.VK_ERROR_INCOMPATIBLE_DRIVER:  # what the loader says when it finds no driver
            raise VulkanUnavailable(
                "no Vulkan driver found (vkCreateInstance: VK_ERROR_INCOMPATIBLE_DRIVER). Install "
                "one, e.g. on Debian/Ubuntu `sudo apt-get install mesa-vulkan-drivers` (lavapipe, "
                "the CPU driver), or your GPU vendor's driver")
        if code != lib.VK_SUCCESS:
            raise VulkanUnavailable(f"vkCreateInstance failed: {result_name(code)} ({code})")
        self.handle = handle[0]
        self._messenger = None
        if self.validation:
            self._install_messenger()

    def _install_messenger(self) -> None:
        @ffi.callback("PFN_vkDebugUtilsMessengerCallbackEXT")
        def on_message(severity: int, types: int, data: Any, user: Any) -> int:
            try:
                text = ffi.string(data.pMessage).decode(errors="replace")
                with _messages_lock:
                    _messages.append(text)
            except Exception:  # noqa: BLE001 - never raise through the driver
                pass
            return 0

        self._callback = on_message
        sev = (lib.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT
               | lib.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT)
        types = (lib.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
                 | lib.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT
                 | lib.VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT)
        info = new("VkDebugUtilsMessengerCreateInfoEXT", self._keep,
                   sType=lib.VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
                   messageSeverity=sev, messageType=types, pfnUserCallback=on_message)
        create = instance_proc(self.handle, "vkCreateDebugUtilsMessengerEXT",
                               "PFN_vkCreateDebugUtilsMessengerEXT")
        out = ffi.new("VkDebugUtilsMessengerEXT*")
        check(create(self.handle, info, ffi.NULL, out), "vkCreateDebugUtilsMessengerEXT")
        self._messenger = out[0]

    def physical_devices(self) -> list[Any]:
        count = ffi.new("uint32_t*")
        check(lib.vkEnumeratePhysicalDevices(self.handle, count, ffi.NULL), "vkEnumeratePhysicalDevices")
        arr = ffi.new("VkPhysicalDevice[]", count[0])
        check(lib.vkEnumeratePhysicalDevices(self.handle, count, arr), "vkEnumeratePhysicalDevices")
        return [arr[i] for i in range(count[0])]  # handles are plain pointers: safe to copy out

    def devices(self) -> list[tuple[int, Any, Capabilities]]:
        """(index, VkPhysicalDevice, capabilities) in enumeration order."""
        return [(i, pd, read_capabilities(pd, self.handle))
                for i, pd in enumerate(self.physical_devices())]

    def close(self) -> None:
        if getattr(self, "handle", None) is None:
            return
        if self._messenger is not None:
            destroy = instance_proc(self.handle, "vkDestroyDebugUtilsMessengerEXT",
                                    "PFN_vkDestroyDebugUtilsMessengerEXT")
            destroy(self.handle, self._messenger, ffi.NULL)
            self._messenger = None
        lib.vkDestroyInstance(self.handle, ffi.NULL)
        self.handle = None

    def __enter__(self) -> "Instance":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def choose_device(devices: list[tuple[int, Any, Capabilities]], selector: str | None = None,
                  origin: str = "selector") -> tuple[int, Any, Capabilities]:
    """Pick by `selector` (index or name substring; default `$VKQ_DEVICE`), else by type:
    discrete GPU, integrated, virtual, CPU. A selector that matches nothing is an error that
    names it by `origin` (what the user typed it as, e.g. "--device"), or as VKQ_DEVICE."""
    if not devices:
        raise VulkanUnavailable("no Vulkan device found (Debian/Ubuntu: `sudo apt-get install "
                                "mesa-vulkan-drivers` for lavapipe, or install your GPU driver)")
    if selector is None:
        selector, origin = device_selector(), "VKQ_DEVICE"
    if selector:
        if selector.strip().isdigit():
            idx = int(selector)
            for d in devices:
                if d[0] == idx:
                    return d
            raise VulkanUnavailable(f"{origin}={selector.strip()}: no device with that index "
                                    f"(have {[d[0] for d in devices]})")
        for d in devices:
            if selector.lower() in d[2].name.lower():
                return d
        raise VulkanUnavailable(f"{origin}={selector!r} matches no device name "
                                f"(have {[d[2].name for d in devices]})")
    return min(devices, key=lambda d: (TYPE_PREFERENCE.index(d[2].device_type), d[0]))
