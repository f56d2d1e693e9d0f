// rope.glsl: rotary position embedding, transformers' rotate_half convention, shared by the
// rope kernel (rope.comp.j2) and the attention kernel that ropes its query and new key itself
// (attention.comp.j2, FUSED). Per head of 2 * half values, x1 = its first half, x2 = its
// second:
//     out1 = x1 * cos - x2 * sin,   out2 = x2 * cos + x1 * sin
// with cos/sin from tables [table rows, half] (vkq.RopeTable) at the position's row. `precise`
// keeps each product rounded before the sum, as transformers computes it (x * cos and
// rotate_half(x) * sin are separate float32 tensors): no fused multiply-add, so every kernel
// that includes this gives the same bits. The including shader declares the float buffers
// t_cos and t_sin.

// (out1, out2) of the pair (x1, x2) = element j and j + half of a head, at table row p.
vec2 rope_pair(float x1, float x2, uint p, uint j, uint half_dim) {
    const float c = t_cos[p * half_dim + j];
    const float s = t_sin[p * half_dim + j];
    precise float x1c = x1 * c;
    precise float x2s = x2 * s;
    precise float x2c = x2 * c;
    precise float x1s = x1 * s;
    precise float out1 = x1c - x2s;
    precise float out2 = x2c + x1s;
    return vec2(out1, out2);
}
