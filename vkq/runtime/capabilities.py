"""What a physical device can do, read once through the Vulkan 1.1-1.3 feature/property chains."""
from __future__ import annotations

import dataclasses
from typing import Any

from vkq.runtime.vk import VulkanUnavailable, ffi, instance_proc, lib, new, to_str

DEVICE_TYPES = {
    lib.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: "discrete",
    lib.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: "integrated",
    lib.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: "virtual",
    lib.VK_PHYSICAL_DEVICE_TYPE_CPU: "cpu",
    lib.VK_PHYSICAL_DEVICE_TYPE_OTHER: "other",
}
#: Default-device preference: discrete GPU first, then integrated, then CPU (lavapipe).
TYPE_PREFERENCE = ("discrete", "integrated", "virtual", "cpu", "other")

_SUBGROUP_ARITHMETIC = lib.VK_SUBGROUP_FEATURE_ARITHMETIC_BIT
PIPELINE_STATISTICS_EXTENSION = "VK_KHR_pipeline_executable_properties"
COOPERATIVE_MATRIX_EXTENSION = "VK_KHR_cooperative_matrix"

#: VkComponentTypeKHR -> the name vkq uses (CoopMatShape fields).
COMPONENT_TYPES = {
    lib.VK_COMPONENT_TYPE_FLOAT16_KHR: "float16", lib.VK_COMPONENT_TYPE_FLOAT32_KHR: "float32",
    lib.VK_COMPONENT_TYPE_FLOAT64_KHR: "float64", lib.VK_COMPONENT_TYPE_SINT8_KHR: "sint8",
    lib.VK_COMPONENT_TYPE_SINT16_KHR: "sint16", lib.VK_COMPONENT_TYPE_SINT32_KHR: "sint32",
    lib.VK_COMPONENT_TYPE_SINT64_KHR: "sint64", lib.VK_COMPONENT_TYPE_UINT8_KHR: "uint8",
    lib.VK_COMPONENT_TYPE_UINT16_KHR: "uint16", lib.VK_COMPONENT_TYPE_UINT32_KHR: "uint32",
    lib.VK_COMPONENT_TYPE_UINT64_KHR: "uint64",
    # VK_COMPONENT_TYPE_BFLOAT16_KHR (VK_KHR_shader_bfloat16): newer than the `vulkan`
    # binding's headers; the H200's driver lists a bf16 -> fp32 shape with it
    1000141000: "bfloat16",
}
SCOPES = {lib.VK_SCOPE_DEVICE_KHR: "device", lib.VK_SCOPE_WORKGROUP_KHR: "workgroup",
          lib.VK_SCOPE_SUBGROUP_KHR: "subgroup", lib.VK_SCOPE_QUEUE_FAMILY_KHR: "queue_family"}


@dataclasses.dataclass(frozen=True)
class CoopMatShape:
    """One cooperative-matrix multiply the device runs: (M x K) A times (K x N) B plus
    (M x N) C -> result, component types by name ("float16", "sint8", ...), at `scope`."""

    m: int
    n: int
    k: int
    a: str
    b: str
    c: str
    result: str
    saturating: bool = False
    scope: str = "subgroup"

    def __str__(self) -> str:
        sat = " saturating" if self.saturating else ""
        return (f"{self.a} x {self.b} -> {self.result} {self.m}x{self.n}x{self.k} "
                f"({self.scope}{sat})")


@dataclasses.dataclass(frozen=True)
class MemoryHeap:
    size: int
    device_local: bool


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """Features and limits vkq cares about. Feature flags are what the device supports; the
    runtime enables exactly these when it creates the logical device."""

    name: str
    device_type: str
    api_version: tuple[int, int, int]
    driver: str
    integer_dot_product: bool
    integer_dot_product_accelerated: bool
    shader_int8: bool
    shader_float16: bool
    storage_8bit: bool
    storage_16bit: bool
    subgroup_size: int
    subgroup_arithmetic: bool
    subgroup_shuffle: bool
    subgroup_size_control: bool
    max_shared_memory: int
    max_workgroup_invocations: int
    max_workgroup_size: tuple[int, int, int]
    max_workgroup_count: tuple[int, int, int]
    max_storage_buffer_range: int
    max_memory_allocation_size: int
    max_push_constants_size: int
    timestamps: bool
    timestamp_period_ns: float
    memory_heaps: tuple[MemoryHeap, ...]
    unified_memory: bool
    #: VK_KHR_pipeline_executable_properties + pipelineExecutableInfo: the driver's compiler
    #: statistics (registers, spills, ...) per pipeline, `Kernel.statistics()`.
    pipeline_statistics: bool
    #: The Vulkan memory model with device scope (vulkanMemoryModel and
    #: vulkanMemoryModelDeviceScope): GLSL's cooperative matrices use the model, and once it is
    #: enabled, shaders with device-scope barriers (attention's merge) need the device scope.
    vulkan_memory_model: bool = False
    #: VK_KHR_cooperative_matrix with its feature: the shapes the device lists (tensor
    #: cores), as read by vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR; empty without.
    cooperative_matrix: tuple[CoopMatShape, ...] = ()

    def has_coopmat(self, m: int, n: int, k: int, a: str, c: str, b: str | None = None,
                    result: str | None = None) -> bool:
        """Whether the device lists this subgroup-scope, non-saturating shape (B's type
        defaults to A's, the result's to C's), with the Vulkan memory model to run it."""
        want = (m, n, k, a, b or a, c, result or c, False, "subgroup")
        return self.vulkan_memory_model and any(
            (s.m, s.n, s.k, s.a, s.b, s.c, s.result, s.saturating, s.scope) == want
            for s in self.cooperative_matrix)

    def summary(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory_heaps"] = [f"{h.size / 2**30:.1f} GiB{' device-local' if h.device_local else ''}"
                             for h in self.memory_heaps]
        d["cooperative_matrix"] = [str(s) for s in self.cooperative_matrix] or "none"
        return d


def _version(v: int) -> tuple[int, int, int]:
    return (v >> 22) & 0x7F, (v >> 12) & 0x3FF, v & 0xFFF


def _chain(keep: list[Any], *pairs: tuple[str, int]) -> list[Any]:
    """Allocate structs linked through pNext, in order; returns them."""
    structs = [new(ctype, keep, sType=stype) for ctype, stype in pairs]
    for a, b in zip(structs, structs[1:]):
        a.pNext = b
    return structs


def read_capabilities(physical_device: Any, instance: Any = None) -> Capabilities:
    """The device's Capabilities. `instance` (the VkInstance) is needed to read the
    cooperative-matrix shapes (an extension function); without it none are reported."""
    keep: list[Any] = []
    props0 = new("VkPhysicalDeviceProperties", keep)
    lib.vkGetPhysicalDeviceProperties(physical_device, props0)
    api = _version(props0.apiVersion)
    has13 = api >= (1, 3, 0)

    feat_pairs = [("VkPhysicalDeviceFeatures2", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2),
                  ("VkPhysicalDeviceVulkan11Features", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES),
                  ("VkPhysicalDeviceVulkan12Features", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES)]
    prop_pairs = [("VkPhysicalDeviceProperties2", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2),
                  ("VkPhysicalDeviceVulkan11Properties", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_PROPERTIES),
                  ("VkPhysicalDeviceVulkan12Properties", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_PROPERTIES)]
    if has13:  # the 1.3 structs may only be chained on devices that report 1.3
        feat_pairs.append(("VkPhysicalDeviceVulkan13Features", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES))
        prop_pairs.append(("VkPhysicalDeviceVulkan13Properties", lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_PROPERTIES))
    # An extension's struct may only be chained when the device lists the extension.
    extensions = device_extensions(physical_device)
    has_exec_props = PIPELINE_STATISTICS_EXTENSION in extensions
    has_coopmat = COOPERATIVE_MATRIX_EXTENSION in extensions and instance is not None
    coopmat_index = len(feat_pairs)
    if has_coopmat:
        feat_pairs.append(("VkPhysicalDeviceCooperativeMatrixFeaturesKHR",
                           lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR))
    if has_exec_props:
        feat_pairs.append(("VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR",
                           lib.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR))
    feats = _chain(keep, *feat_pairs)
    props = _chain(keep, *prop_pairs)
    lib.vkGetPhysicalDeviceFeatures2(physical_device, feats[0])
    lib.vkGetPhysicalDeviceProperties2(physical_device, props[0])
    f11, f12 = feats[1], feats[2]
    p11, p12 = props[1], props[2]
    f13 = feats[3] if has13 else None
    p13 = props[3] if has13 else None
    limits = props[0].properties.limits

    mem = new("VkPhysicalDeviceMemoryProperties", keep)
    lib.vkGetPhysicalDeviceMemoryProperties(physical_device, mem)
    heaps = tuple(MemoryHeap(int(mem.memoryHeaps[i].size),
                             bool(mem.memoryHeaps[i].flags & lib.VK_MEMORY_HEAP_DEVICE_LOCAL_BIT))
                  for i in range(mem.memoryHeapCount))
    dtype = DEVICE_TYPES.get(props0.deviceType, "other")
    want = (lib.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | lib.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT
            | lib.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
    host_visible_local = any((mem.memoryTypes[i].propertyFlags & want) == want
                             for i in range(mem.memoryTypeCount))
    # Discrete GPUs also expose a small host-visible device-local window (BAR); only CPU and
    # integrated devices really share one memory, where staging copies would be pure waste.
    unified = host_visible_local and dtype in ("integrated", "cpu")

    queue_ok = _compute_queue_timestamp_bits(physical_device) > 0
    coopmat_feature = has_coopmat and bool(feats[coopmat_index].cooperativeMatrix)
    return Capabilities(
        name=to_str(props0.deviceName), device_type=dtype, api_version=api,
        driver=f"{to_str(p12.driverName)} {to_str(p12.driverInfo)}".strip(),
        integer_dot_product=bool(f13 and f13.shaderIntegerDotProduct),
        integer_dot_product_accelerated=bool(p13 and p13.integerDotProduct4x8BitPackedSignedAccelerated),
        shader_int8=bool(f12.shaderInt8), shader_float16=bool(f12.shaderFloat16),
        storage_8bit=bool(f12.storageBuffer8BitAccess), storage_16bit=bool(f11.storageBuffer16BitAccess),
        subgroup_size=int(p11.subgroupSize),
        subgroup_arithmetic=bool(p11.subgroupSupportedOperations & _SUBGROUP_ARITHMETIC
                                 and p11.subgroupSupportedStages & lib.VK_SHADER_STAGE_COMPUTE_BIT),
        subgroup_shuffle=bool(p11.subgroupSupportedOperations & lib.VK_SUBGROUP_FEATURE_SHUFFLE_BIT
                              and p11.subgroupSupportedStages & lib.VK_SHADER_STAGE_COMPUTE_BIT),
        subgroup_size_control=bool(f13 and f13.subgroupSizeControl),
        max_shared_memory=int(limits.maxComputeSharedMemorySize),
        max_workgroup_invocations=int(limits.maxComputeWorkGroupInvocations),
        max_workgroup_size=tuple(int(limits.maxComputeWorkGroupSize[i]) for i in range(3)),
        max_workgroup_count=tuple(int(limits.maxComputeWorkGroupCount[i]) for i in range(3)),
        max_storage_buffer_range=int(limits.maxStorageBufferRange),
        max_memory_allocation_size=int(p11.maxMemoryAllocationSize),
        max_push_constants_size=int(limits.maxPushConstantsSize),
        timestamps=bool(queue_ok and limits.timestampPeriod > 0),
        timestamp_period_ns=float(limits.timestampPeriod),
        memory_heaps=heaps, unified_memory=unified,
        pipeline_statistics=bool(has_exec_props and feats[-1].pipelineExecutableInfo),
        vulkan_memory_model=bool(f12.vulkanMemoryModel and f12.vulkanMemoryModelDeviceScope),
        cooperative_matrix=(cooperative_matrix_shapes(physical_device, instance)
                            if coopmat_feature else ()))


def cooperative_matrix_shapes(physical_device: Any, instance: Any) -> tuple[CoopMatShape, ...]:
    """The device's cooperative-matrix shapes (VK_KHR_cooperative_matrix). An extension
    function: fetched through vkGetInstanceProcAddr; every array element gets its sType
    before the call (the driver checks it), and the array outlives the call."""
    try:
        fn = instance_proc(instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR",
                           "PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR")
    except VulkanUnavailable:
        return ()
    count = ffi.new("uint32_t*")
    if fn(physical_device, count, ffi.NULL) != lib.VK_SUCCESS or count[0] == 0:
        return ()
    arr = ffi.new("VkCooperativeMatrixPropertiesKHR[]", count[0])
    for i in range(count[0]):
        arr[i].sType = lib.VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR
        arr[i].pNext = ffi.NULL
    if fn(physical_device, count, arr) not in (lib.VK_SUCCESS, lib.VK_INCOMPLETE):
        return ()
    out = []
    for i in range(count[0]):
        p = arr[i]
        out.append(CoopMatShape(
            int(p.MSize), int(p.NSize), int(p.KSize),
            *(COMPONENT_TYPES.get(t, f"type{t}") for t in (p.AType, p.BType, p.CType, p.ResultType)),
            saturating=bool(p.saturatingAccumulation), scope=SCOPES.get(p.scope, f"scope{p.scope}")))
    return tuple(out)


def device_extensions(physical_device: Any) -> set[str]:
    count = ffi.new("uint32_t*")
    lib.vkEnumerateDeviceExtensionProperties(physical_device, ffi.NULL, count, ffi.NULL)
    arr = ffi.new("VkExtensionProperties[]", count[0])
    lib.vkEnumerateDeviceExtensionProperties(physical_device, ffi.NULL, count, arr)
    return {to_str(arr[i].extensionName) for i in range(count[0])}


def compute_queue_family(physical_device: Any) -> int:
    """Index of the queue family used for compute: prefer one with timestamps."""
    families = _queue_families(physical_device)
    candidates = [(bits > 0, i) for i, (flags, bits) in enumerate(families)
                  if flags & lib.VK_QUEUE_COMPUTE_BIT]
    if not candidates:
        raise RuntimeError("device has no compute queue")
    return max(candidates, key=lambda c: (c[0], -c[1]))[1]


def timestamp_valid_bits(physical_device: Any) -> int:
    return _queue_families(physical_device)[compute_queue_family(physical_device)][1]


def _compute_queue_timestamp_bits(physical_device: Any) -> int:
    try:
        return timestamp_valid_bits(physical_device)
    except RuntimeError:
        return 0


def _queue_families(physical_device: Any) -> list[tuple[int, int]]:
    """(queueFlags, timestampValidBits) per family, copied out of the cffi array."""
    count = ffi.new("uint32_t*")
    lib.vkGetPhysicalDeviceQueueFamilyProperties(physical_device, count, ffi.NULL)
    arr = ffi.new("VkQueueFamilyProperties[]", count[0])
    lib.vkGetPhysicalDeviceQueueFamilyProperties(physical_device, count, arr)
    return [(int(arr[i].queueFlags), int(arr[i].timestampValidBits)) for i in range(count[0])]
