// Sum (workgroup_sum) or maximum (workgroup_max) of one float per invocation across the
// workgroup, returned to every invocation. Template parameters: WG (workgroup size, a power of
// two) and SUBGROUP (the device has subgroup arithmetic). Every invocation must call them
// (they contain barriers).
// With subgroups: each subgroup reduces in registers, its first invocation writes one
// partial, and everyone combines the partials: two barriers in all, where the shared-memory
// tree takes log2(WG) + 2 (measured: a 4096-wide rms_norm row on the H200 spent most of its
// 7 us in the two trees' barriers).
{% if SUBGROUP %}
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
{{ require("subgroup_arithmetic") }}
shared float wg_reduce_scratch[{{ WG }}];  // one per subgroup (subgroups of >= 1 invocation)
{% for name, sg, combine in (("workgroup_sum", "subgroupAdd", "a + b"), ("workgroup_max", "subgroupMax", "max(a, b)")) %}

float {{ name }}(float v) {
    v = {{ sg }}(v);
    if (subgroupElect()) {
        wg_reduce_scratch[gl_SubgroupID] = v;
    }
    barrier();
    float a = wg_reduce_scratch[0];
    for (uint i = 1u; i < gl_NumSubgroups; ++i) {
        const float b = wg_reduce_scratch[i];
        a = {{ combine }};
    }
    barrier();  // scratch may be reused right after
    return a;
}
{% endfor %}
{% else %}
// Flat shared array and a tree: log2(WG) barrier steps, no bank-conflicting structs.
shared float wg_reduce_scratch[{{ WG }}];
{% for name, combine in (("workgroup_sum", "a + b"), ("workgroup_max", "max(a, b)")) %}

float {{ name }}(float v) {
    wg_reduce_scratch[gl_LocalInvocationIndex] = v;
    barrier();
    for (uint s = {{ WG // 2 }}u; s > 0u; s >>= 1) {
        if (gl_LocalInvocationIndex < s) {
            const float a = wg_reduce_scratch[gl_LocalInvocationIndex];
            const float b = wg_reduce_scratch[gl_LocalInvocationIndex + s];
            wg_reduce_scratch[gl_LocalInvocationIndex] = {{ combine }};
        }
        barrier();
    }
    float total = wg_reduce_scratch[0];
    barrier();  // scratch may be reused right after
    return total;
}
{% endfor %}
{% endif %}
