// Sum of one float per invocation across the workgroup, returned to every invocation.
// Needs the template parameter WG (workgroup size, a power of two). Flat shared array and a
// tree: log2(WG) barrier steps, no bank-conflicting structs.
shared float wg_sum_scratch[{{ WG }}];

float workgroup_sum(float v) {
    wg_sum_scratch[gl_LocalInvocationIndex] = v;
    barrier();
    for (uint s = {{ WG // 2 }}u; s > 0u; s >>= 1) {
        if (gl_LocalInvocationIndex < s) {
            wg_sum_scratch[gl_LocalInvocationIndex] += wg_sum_scratch[gl_LocalInvocationIndex + s];
        }
        barrier();
    }
    float total = wg_sum_scratch[0];
    barrier();  // scratch may be reused right after
    return total;
}
