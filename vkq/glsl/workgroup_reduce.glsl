// Sum (workgroup_sum) or maximum (workgroup_max) of one float per invocation across the
// workgroup, returned to every invocation. Needs the template parameter WG (workgroup size, a
// power of two). Flat shared array and a tree: log2(WG) barrier steps, no bank-conflicting
// structs. Every invocation must call them (they contain barriers).
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
