// float <-> IEEE half for caches stored as two halves per uint (no 16-bit storage needed).
// half_bits rounds to nearest, ties to even, as numpy's float16 conversion does: GLSL leaves
// packHalf2x16's rounding unspecified, so it is spelled out. Overflow gives inf (from 65520
// up, the first value that rounds past 65504), NaN stays NaN, subnormals are rounded too.
uint half_bits(float f) {
    const uint x = floatBitsToUint(f);
    const uint sign = (x >> 16) & 0x8000u;
    const uint a = x & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) {
        return sign | (a > 0x7F800000u ? 0x7E00u : 0x7C00u);  // NaN, inf
    }
    if (a >= 0x477FF000u) {
        return sign | 0x7C00u;
    }
    if (a >= 0x38800000u) {
        // normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits; a
        // carry out of the mantissa correctly bumps the exponent
        return sign | (((a + 0x0FFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10));
    }
    // below 2^-14: a multiple of 2^-24 (scaling by 2^24 is exact; 1024 is the smallest normal)
    return sign | uint(roundEven(uintBitsToFloat(a) * 16777216.0));
}

uint pack_halves(vec2 v) {
    return half_bits(v.x) | (half_bits(v.y) << 16);
}

// Hardware conversion: exact wherever half subnormals are kept (lavapipe, NVIDIA); Vulkan
// lets a device flush them (|x| < 6.1e-5) to zero, an error below what fp16 storage costs.
vec4 unpack_halves(uvec2 u) {
    return vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
}
