"""The raw Vulkan binding (PyPI `vulkan`, cffi) and the few helpers every runtime module uses.

We call `lib` functions directly with structs built by `ffi.new` instead of the binding's
Python-level wrappers: nested structs and strings built inline by those wrappers are freed
before the driver reads them (docs/design.md §1), while cdata we allocate ourselves lives exactly as
long as we keep a reference to it.
"""
from __future__ import annotations

from typing import Any


class VulkanUnavailable(RuntimeError):
    """No Vulkan loader, no driver, or no usable device."""


try:
    import vulkan as _vulkan_module  # noqa: F401  (dlopens libvulkan.so.1 at import)
    from vulkan import ffi, lib
except OSError as e:  # the binding says "Cannot find Vulkan SDK" when libvulkan is missing
    raise VulkanUnavailable(
        "the Vulkan loader (libvulkan.so.1) was not found. Install it and a driver, e.g. on "
        "Debian/Ubuntu: `sudo apt-get install libvulkan1 mesa-vulkan-drivers` (lavapipe, the "
        "CPU driver) or your GPU vendor's driver.") from e


class VulkanError(RuntimeError):
    """A Vulkan call returned an error code."""

    def __init__(self, what: str, code: int):
        self.code = code
        super().__init__(f"{what} failed: {result_name(code)} ({code})")


def result_name(code: int) -> str:
    for name in dir(lib):
        if name.startswith("VK_") and not name.startswith("VK_STRUCTURE") and getattr(lib, name) == code:
            if name.startswith(("VK_ERROR", "VK_SUCCESS", "VK_NOT_READY", "VK_TIMEOUT", "VK_INCOMPLETE")):
                return name
    return "VkResult"


def check(code: int, what: str) -> None:
    if code != lib.VK_SUCCESS:
        raise VulkanError(what, code)


def new(ctype: str, keep: list[Any] | None = None, **fields: Any) -> Any:
    """`ffi.new(ctype + '*')` with fields set; `keep` receives the struct so the caller owns it."""
    obj = ffi.new(ctype + "*")
    for k, v in fields.items():
        setattr(obj, k, v)
    if keep is not None:
        keep.append(obj)
    return obj


def cstrings(names: list[str], keep: list[Any]) -> Any:
    """A `const char* const*` array whose strings live as long as `keep`."""
    bufs = [ffi.new("char[]", n.encode()) for n in names]
    arr = ffi.new("char*[]", bufs) if bufs else ffi.NULL
    keep.extend(bufs)
    keep.append(arr)
    return arr


def to_str(char_array: Any) -> str:
    return ffi.string(char_array).decode(errors="replace")


def instance_proc(instance: Any, name: str, pfn_type: str) -> Any:
    ptr = lib.vkGetInstanceProcAddr(instance, name.encode())
    if ptr == ffi.NULL:
        raise VulkanUnavailable(f"{name} is not available from this Vulkan instance")
    return ffi.cast(pfn_type, ptr)


def device_proc(device: Any, name: str, pfn_type: str) -> Any:
    """An extension's device-level function (the loader exports only core ones as `lib.*`)."""
    ptr = lib.vkGetDeviceProcAddr(device, name.encode())
    if ptr == ffi.NULL:
        raise VulkanUnavailable(f"{name} is not available from this Vulkan device "
                                "(is its extension enabled?)")
    return ffi.cast(pfn_type, ptr)
