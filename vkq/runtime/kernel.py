"""A compute pipeline for one shader variant and one set of specialization constants."""
from __future__ import annotations

import struct
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vkq.shaderlib import VariantInfo
from vkq.runtime.vk import check, device_proc, ffi, lib, new, to_str

if TYPE_CHECKING:
    from vkq.runtime.device import Device

_SPEC_FORMAT = {"uint": "<I", "int": "<i", "float": "<f"}
_STATISTIC_VALUE = {  # VkPipelineExecutableStatisticFormatKHR -> reader of the value union
    lib.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR: lambda v: bool(v.b32),
    lib.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR: lambda v: int(v.i64),
    lib.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR: lambda v: int(v.u64),
    lib.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_FLOAT64_KHR: lambda v: float(v.f64),
}


def _destroy(dev: Any, module: Any, set_layout: Any, layout: Any, pipeline: Any) -> None:
    lib.vkDestroyPipeline(dev, pipeline, ffi.NULL)
    lib.vkDestroyPipelineLayout(dev, layout, ffi.NULL)
    lib.vkDestroyDescriptorSetLayout(dev, set_layout, ffi.NULL)
    lib.vkDestroyShaderModule(dev, module, ffi.NULL)


def _enumerate(call: Callable[[Any, Any], int], ctype: str, stype: int, what: str,
               keep: list[Any]) -> list[Any]:
    """Vulkan's two-call pattern (count, then array) for arrays of extensible structs; the
    array lives in `keep` (its elements do not keep it alive)."""
    count = ffi.new("uint32_t*")
    check(call(count, ffi.NULL), what)
    arr = ffi.new(f"{ctype}[]", count[0])
    for i in range(count[0]):
        arr[i].sType = stype
    check(call(count, arr), what)
    keep.append(arr)
    return [arr[i] for i in range(count[0])]


class Kernel:
    """Shader module + descriptor-set layout + pipeline layout + pipeline, owned together.

    Its interface (storage buffers in binding order, push-constant fields) comes from the
    variant's manifest entry, so dispatches are checked by name rather than position.
    """

    def __init__(self, device: "Device", info: VariantInfo, spirv: bytes,
                 spec: Mapping[str, Any] | None = None):
        self.device = device
        self.info = info
        self.name = info.name
        self.binding_names = tuple(b["name"] for b in info.bindings)
        self.spec = dict(spec or {})
        dev = device.handle
        keep: list[Any] = []
        code = ffi.new("char[]", spirv)
        keep.append(code)
        module_info = new("VkShaderModuleCreateInfo", keep,
                          sType=lib.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                          codeSize=len(spirv), pCode=ffi.cast("uint32_t*", code))
        out = ffi.new("VkShaderModule*")
        check(lib.vkCreateShaderModule(dev, module_info, ffi.NULL, out), "vkCreateShaderModule")
        module = out[0]

        n = len(info.bindings)
        bindings = ffi.new("VkDescriptorSetLayoutBinding[]", max(n, 1))
        keep.append(bindings)
        for i in range(n):
            bindings[i].binding = i
            bindings[i].descriptorType = lib.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
            bindings[i].descriptorCount = 1
            bindings[i].stageFlags = lib.VK_SHADER_STAGE_COMPUTE_BIT
        set_info = new("VkDescriptorSetLayoutCreateInfo", keep,
                       sType=lib.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                       bindingCount=n, pBindings=bindings)
        out_set = ffi.new("VkDescriptorSetLayout*")
        check(lib.vkCreateDescriptorSetLayout(dev, set_info, ffi.NULL, out_set),
              "vkCreateDescriptorSetLayout")
        set_layout = out_set[0]

        self.push_size = 4 * len(info.push_constants)
        if self.push_size > device.caps.max_push_constants_size:
            raise ValueError(f"{info.name}: {self.push_size} bytes of push constants exceed the "
                             f"device limit ({device.caps.max_push_constants_size})")
        push_range = new("VkPushConstantRange", keep, stageFlags=lib.VK_SHADER_STAGE_COMPUTE_BIT,
                         offset=0, size=self.push_size)
        set_layouts = ffi.new("VkDescriptorSetLayout[]", [set_layout])
        keep.append(set_layouts)
        layout_info = new("VkPipelineLayoutCreateInfo", keep,
                          sType=lib.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                          setLayoutCount=1, pSetLayouts=set_layouts,
                          pushConstantRangeCount=1 if self.push_size else 0,
                          pPushConstantRanges=push_range if self.push_size else ffi.NULL)
        out_layout = ffi.new("VkPipelineLayout*")
        check(lib.vkCreatePipelineLayout(dev, layout_info, ffi.NULL, out_layout), "vkCreatePipelineLayout")
        layout = out_layout[0]

        spec_info = self._specialization(keep)
        entry = ffi.new("char[]", b"main")
        keep.append(entry)
        stage = new("VkPipelineShaderStageCreateInfo", keep,
                    sType=lib.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                    stage=lib.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName=entry,
                    pSpecializationInfo=spec_info)
        pipe_info = ffi.new("VkComputePipelineCreateInfo[]", 1)
        keep.append(pipe_info)
        pipe_info[0].sType = lib.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO
        pipe_info[0].stage = stage[0]
        pipe_info[0].layout = layout
        if device.caps.pipeline_statistics:  # else statistics() has nothing to read
            pipe_info[0].flags = lib.VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR
        out_pipe = ffi.new("VkPipeline*")
        check(lib.vkCreateComputePipelines(dev, device.pipeline_cache, 1, pipe_info, ffi.NULL, out_pipe),
              "vkCreateComputePipelines")
        self.pipeline = out_pipe[0]
        self.layout = layout
        self.set_layout = set_layout
        self._finalizer = weakref.finalize(self, _destroy, dev, module, set_layout, layout, self.pipeline)
        device._adopt(self)

    def _specialization(self, keep: list[Any]) -> Any:
        declared = {name: ty for name, ty, _ in self.info.spec_constants}
        unknown = set(self.spec) - set(declared)
        if unknown:
            raise ValueError(f"{self.name}: unknown specialization constants {sorted(unknown)}; "
                             f"declared: {sorted(declared)}")
        if not self.spec:
            return ffi.NULL
        ids = [i for i, (name, _, _) in enumerate(self.info.spec_constants) if name in self.spec]
        data = b"".join(struct.pack(_SPEC_FORMAT[self.info.spec_constants[i][1]],
                                    self.spec[self.info.spec_constants[i][0]]) for i in ids)
        entries = ffi.new("VkSpecializationMapEntry[]", len(ids))
        for j, i in enumerate(ids):
            entries[j].constantID = i
            entries[j].offset = 4 * j
            entries[j].size = 4
        blob = ffi.new("char[]", data)
        keep.extend([entries, blob])
        return new("VkSpecializationInfo", keep, mapEntryCount=len(ids), pMapEntries=entries,
                   dataSize=len(data), pData=blob)

    def pack_push_constants(self, values: Mapping[str, Any]) -> bytes:
        names = [n for n, _ in self.info.push_constants]
        if set(values) != set(names):
            raise ValueError(f"{self.name}: push constants {sorted(values)} do not match the "
                             f"declared {names}")
        try:
            return struct.pack(self.info.push_constant_format, *(values[n] for n in names))
        except struct.error as e:
            raise ValueError(f"{self.name}: push constant out of range: {e}") from e

    def statistics(self) -> dict[str, float | int | bool]:
        """The driver's compiler statistics for this pipeline (VK_KHR_pipeline_executable_properties):
        name -> value, e.g. registers per thread or spilled bytes on NVIDIA. Names and meaning are
        the driver's own; with several executables each name is prefixed by the executable's."""
        caps = self.device.caps
        if not caps.pipeline_statistics:
            raise RuntimeError(f"{caps.name} does not report pipeline statistics (it lacks "
                               "VK_KHR_pipeline_executable_properties / pipelineExecutableInfo)")
        if self.closed:
            raise RuntimeError(f"kernel {self.name} is closed")
        dev = self.device.handle
        get_executables = device_proc(dev, "vkGetPipelineExecutablePropertiesKHR",
                                      "PFN_vkGetPipelineExecutablePropertiesKHR")
        get_statistics = device_proc(dev, "vkGetPipelineExecutableStatisticsKHR",
                                     "PFN_vkGetPipelineExecutableStatisticsKHR")
        keep: list[Any] = []
        pipeline_info = new("VkPipelineInfoKHR", keep, sType=lib.VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR,
                            pipeline=self.pipeline)
        executables = _enumerate(lambda n, arr: get_executables(dev, pipeline_info, n, arr),
                                 "VkPipelineExecutablePropertiesKHR",
                                 lib.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR,
                                 "vkGetPipelineExecutablePropertiesKHR", keep)
        names = [to_str(e.name) for e in executables]
        out: dict[str, float | int | bool] = {}
        for i, exe in enumerate(names):
            prefix = "" if len(names) == 1 else f"{exe}/" if names.count(exe) == 1 else f"{exe}#{i}/"
            exe_info = new("VkPipelineExecutableInfoKHR", keep,
                           sType=lib.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR,
                           pipeline=self.pipeline, executableIndex=i)
            stats = _enumerate(lambda n, arr: get_statistics(dev, exe_info, n, arr),
                               "VkPipelineExecutableStatisticKHR",
                               lib.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR,
                               "vkGetPipelineExecutableStatisticsKHR", keep)
            for s in stats:
                read = _STATISTIC_VALUE.get(s.format)
                if read is not None:  # a format newer than this binding: skip it
                    out[prefix + to_str(s.name)] = read(s.value)
        return out

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __repr__(self) -> str:
        return f"<vkq Kernel {self.name} spec={self.spec}>"
