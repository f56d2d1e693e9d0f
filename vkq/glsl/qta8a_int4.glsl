// int4 weight words meet int8 activations (the qta8a_qga4w kernels). An "int4_uvec4" word
// component v holds u = q + 8 for 8 consecutive k: byte j's low nibble is k0 + j, its high
// nibble k0 + 4 + j. So v & 0x0F0F0F0F and (v >> 4) & 0x0F0F0F0F are packed 4x8 operands
// (unsigned 0..15, valid as signed int8) for the activation words of k0..k0+3 and
// k0+4..k0+7 ("int8_token_octets" words 2c and 2c + 1). Requires int_dot.glsl.
//
// With xs the activations' sum and ws = sum (u - 8) over the same k, the exact integer
//   sum (xq - zp) * (u - 8) = dot(xq, u) - 8 * xs - zp * ws
// needs no unpacking of u to signed values. Kernels start a dot chain from the correction
// -8 * xs - zp * ws and add one dot at a time: `acc + dot` is one accumulating instruction
// where the device has one (docs/design.md §1).

// The two operands of one component: its low and high nibbles as packed bytes.
ivec2 nibble_operands(uint v) {
    return ivec2(v & 0x0F0F0F0Fu, (v >> 4) & 0x0F0F0F0Fu);
}

// sum (u - 8) over the component's 8 nibbles.
int nibble_wsum(uint v) {
    const uint t = (v & 0x0F0F0F0Fu) + ((v >> 4) & 0x0F0F0F0Fu);  // 4 bytes, each <= 30
    return int((t * 0x01010101u) >> 24) - 64;                       // their sum, <= 120
}

// The operands of two components (v.x, v.y): (lo, hi) of the first, then of the second, in
// the order of their four activation words.
ivec4 word_operands(uvec2 v) {
    return ivec4(nibble_operands(v.x), nibble_operands(v.y));
}

// acc + dot(xq, u) over one component: activation words x = (k0..k0+3, k0+4..k0+7).
int dot2_acc(ivec2 x, ivec2 w, int acc) {
    acc += dot4x8(x.x, w.x);
    acc += dot4x8(x.y, w.y);
    return acc;
}

// acc + dot(xq, u) over two components: four activation words, word_operands.
int dot4_acc(ivec4 x, ivec4 w, int acc) {
    acc += dot4x8(x.x, w.x);
    acc += dot4x8(x.y, w.y);
    acc += dot4x8(x.z, w.z);
    acc += dot4x8(x.w, w.w);
    return acc;
}
