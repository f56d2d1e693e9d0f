// Cooperative matrices (VK_KHR_cooperative_matrix, tensor cores): the GLSL extensions and
// the device features every coopmat variant needs. GLSL's coopmat types come with
// GL_KHR_memory_scope_semantics, which makes glslang emit the Vulkan memory model
// (OpMemoryModel Vulkan): the device must enable vulkanMemoryModel too.
// Matrices here are subgroup-scope; kernels find their subgroup with gl_SubgroupID (basic
// subgroup built-ins only: no subgroup arithmetic next to coopmat ops, which has crashed
// NVIDIA's compiler elsewhere) and are routed only where the subgroup size is 32.
{{ require("cooperative_matrix") }}{{ require("vulkan_memory_model") }}
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_shader_subgroup_basic : require
