// attention_split.glsl: how attention cuts a query row's context into chunks, one per
// workgroup, and how the chunks' partial results become the output in the same dispatch.
//
// Chunks. A query row that attends `len` cache rows is cut into chunks of
//   chunk_length(len) = min(chunk_max, max(chunk_min, round_up(ceil(len / split), chunk_min)))
// rows, so at most `split` chunks (vkq/ops/attention.py: Split, which sizes the grid and the
// scratch with the same formula). The length comes from the position each call or replay
// reads, so a graph recorded once cuts a short context into short chunks and a long one into
// long ones; workgroups whose chunk starts past the context leave at once.
//
// Merge (no second dispatch). Each chunk's workgroup writes its (max m, sum l) per query
// vector and its unnormalized output acc to t_stats / t_part (coherent: other workgroups read
// them), then counts itself in on t_count[unit] with an atomic. The one that arrives last
// (the count reaches the number of chunks) merges every chunk:
//   M = max_c m_c, w_c = 2^(m_c - M), y = sum_c w_c acc_c / sum_c w_c l_c
// and sets the counter back to 0, so the next call (a graph replay) finds it zeroed with no
// clearing dispatch. Memory model (GLSL450 model, Vulkan scopes): a device-scope control
// barrier orders every invocation's partial writes before invocation 0's acquire-release
// atomic; the atomics on one counter form a release sequence, so the last arrival's atomic
// acquires every earlier workgroup's partials; the second control barrier hands that on to
// all its invocations, which read the partials through coherent loads.
//
// Included after attention_io.glsl (push constants split, chunk_min, chunk_max, n_chunks,
// n_heads; buffers t_part, t_stats and t_count unless FINAL; DIM; NO_SCORE).
#extension GL_KHR_memory_scope_semantics : require

uint chunk_length(uint len) {
    const uint per = (len + pc.split - 1u) / pc.split;
    const uint rounded = (per + pc.chunk_min - 1u) / pc.chunk_min * pc.chunk_min;
    return min(pc.chunk_max, max(pc.chunk_min, rounded));
}

uint chunk_count(uint len, uint chunk_len) {
    return (len + chunk_len - 1u) / chunk_len;
}
{% if not FINAL %}

shared uint arrival_s;

// Called by every invocation once this workgroup's partials for `unit` are written; true (in
// every invocation) in the last of the `arrivals` workgroups that write partials for it.
bool last_to_arrive(uint unit, uint arrivals) {
    controlBarrier(gl_ScopeWorkgroup, gl_ScopeDevice,
                   gl_StorageSemanticsBuffer | gl_StorageSemanticsShared, gl_SemanticsAcquireRelease);
    if (gl_LocalInvocationIndex == 0u) {
        const uint before = atomicAdd(t_count[unit], 1u, gl_ScopeDevice, gl_StorageSemanticsBuffer,
                                      gl_SemanticsAcquireRelease);
        const bool last = before + 1u == arrivals;
        if (last) {
            // every arrival has counted: nobody touches the counter again in this dispatch
            atomicExchange(t_count[unit], 0u);
        }
        arrival_s = last ? 1u : 0u;
    }
    controlBarrier(gl_ScopeWorkgroup, gl_ScopeDevice,
                   gl_StorageSemanticsBuffer | gl_StorageSemanticsShared, gl_SemanticsAcquireRelease);
    return arrival_s != 0u;
}

// Where chunk 0 of (query row t, query head `head`) lies in t_stats; t_part at DIM times that.
uint partial_at(uint t, uint head) {
    return (t * pc.n_heads + head) * pc.n_chunks;
}

// Element d of the merged output of the `n` chunks at `at` (partial_at). Chunks go in batches
// of MERGE_BATCH whose loads are issued together (they do not depend on the running max):
// each batch raises the running max m once and rescales what was summed before.
const uint MERGE_BATCH = 8u;

{{ T }} merge_chunks(uint at, uint d, uint n) {
    float m = NO_SCORE;
    float l = 0.0;
    {{ T }} a = {{ T }}(0.0);
    for (uint c0 = 0u; c0 < n; c0 += MERGE_BATCH) {
        vec2 st[MERGE_BATCH];
        {{ T }} x[MERGE_BATCH];
        for (uint i = 0u; i < MERGE_BATCH; ++i) {
            const uint c = at + min(c0 + i, n - 1u);  // past n: the last chunk again, weight 0
            st[i] = t_stats[c];
            x[i] = t_part[c * DIM + d];
        }
        float m_batch = m;
        for (uint i = 0u; i < MERGE_BATCH; ++i) {
            m_batch = c0 + i < n ? max(m_batch, st[i].x) : m_batch;
        }
        const float rescale = exp2(m - m_batch);
        l *= rescale;
        a *= rescale;
        for (uint i = 0u; i < MERGE_BATCH; ++i) {
            const float w = c0 + i < n ? exp2(st[i].x - m_batch) : 0.0;
            l += st[i].y * w;
            a += x[i] * w;
        }
        m = m_batch;
    }
    return a / l;
}
{% endif %}
