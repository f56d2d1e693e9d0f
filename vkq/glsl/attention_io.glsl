// attention_io.glsl: the interface both attention kernels share (attention.comp.j2,
// attention_tiled.comp.j2), so the op binds them alike: the bindings in order, the push
// constants, the specialization constants DIM (head_dim in elements of T) and HPW (query
// heads per workgroup), the cache loads and the query position. Template parameters: T
// ("vec4" or "float"), F16 (the caches hold float16, four per uvec2), FINAL (one chunk: no
// partials, no counters).
{{ spec_constant("DIM", "uint", 32) }}
{{ spec_constant("HPW", "uint", 4) }}
{{ buffer("t_out", T, "writeonly") }}
{% if not FINAL %}
{{ buffer("t_part", T, "readwrite", coherent=True) }}
{{ buffer("t_stats", "vec2", "readwrite", coherent=True) }}
{{ buffer("t_count", "uint", "readwrite") }}
{% endif %}
{{ buffer("t_q", T) }}
{% if F16 %}
{{ buffer("t_k", "uvec2") }}
{{ buffer("t_v", "uvec2") }}
{% include "half.glsl" %}

vec4 load_k(uint i) {
    return unpack_halves(t_k[i]);
}

vec4 load_v(uint i) {
    return unpack_halves(t_v[i]);
}
{% else %}
{{ buffer("t_k", T) }}
{{ buffer("t_v", T) }}

{{ T }} load_k(uint i) {
    return t_k[i];
}

{{ T }} load_v(uint i) {
    return t_v[i];
}
{% endif %}
{{ buffer("t_params", "uint") }}
{{ push_constants([("n_heads", "uint"), ("group", "uint"), ("kv_width", "uint"), ("cache_rows", "uint"), ("rows", "uint"), ("scale", "float"), ("pos", "uint"), ("pos_slot", "uint"), ("split", "uint"), ("chunk_min", "uint"), ("chunk_max", "uint"), ("n_chunks", "uint")]) }}

const float NO_SCORE = -3.402823466e38;  // below every score: 2^(NO_SCORE - m) == 0

// The position of query row 0: a push constant, or the graph parameter a replay set.
uint first_position() {
    return pc.pos_slot == 0xFFFFFFFFu ? pc.pos : t_params[pc.pos_slot];
}
