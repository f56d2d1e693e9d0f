// int4 weight words meet int8 activations (the qta8a_qga4w kernels). An "int4_uvec4" word
// component v holds u = q + 8 for 8 consecutive k: byte j's low nibble is k0 + j, its high
// nibble k0 + 4 + j. So v & 0x0F0F0F0F and (v >> 4) & 0x0F0F0F0F are packed 4x8 operands
// (unsigned 0..15, valid as signed int8) for the activation words of k0..k0+3 and
// k0+4..k0+7 ("int8_token_octets" words 2c and 2c + 1). Requires int_dot.glsl.
//
// With xs the activations' sum and ws = sum (u - 8) over the same k, the exact integer
//   sum (xq - zp) * (u - 8) = dot(xq, u) - 8 * xs - zp * ws
// needs no unpacking of u to signed values.

// The two operands of one component: its low and high nibbles as packed bytes.
ivec2 nibble_operands(uint v) {
    return ivec2(v & 0x0F0F0F0Fu, (v >> 4) & 0x0F0F0F0Fu);
}

// sum (u - 8) over the component's 8 nibbles.
int nibble_wsum(uint v) {
    const uint t = (v & 0x0F0F0F0Fu) + ((v >> 4) & 0x0F0F0F0Fu);  // 4 bytes, each <= 30
    return int((t * 0x01010101u) >> 24) - 64;                       // their sum, <= 120
}

// dot(xq, u) over one component: activation words xlo (k0..k0+3) and xhi (k0+4..k0+7).
int component_dot(int xlo, int xhi, ivec2 w) {
    return dot4x8(xlo, w.x) + dot4x8(xhi, w.y);
}
