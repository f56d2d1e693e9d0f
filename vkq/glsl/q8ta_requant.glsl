// q8ta requantization epilogue (docs/design.md §3), shared by q8ta_linear and q8ta_linear_gemv.
// Needs push constants zp_x, zp_out, relu. Mirrored bit for bit by
// vkq.reference.q8ta (math="float32"): per-channel mult = f32(s_x*s_w/s_out) and
// offs = f32(bias/s_out) come from the host, so no GPU division (not correctly rounded in
// Vulkan) enters the result.
//
// Why the correction cannot be done in plain int32: with |q_x|, |zp_x|, |q_w| <= 128
// (weights may be -128), |acc| <= 128*128*K and |zp_x*wsum| <= 128*128*K; both fit int32 for
// K < 131072 (128*128*131071 = 2147467264 < 2^31), which the host enforces. Their difference
// sum_k (q_x - zp_x)*q_w reaches 255*128*K (< 2^32), which needs 33 bits above K = 65793, so
// it is formed with wrapping int32 arithmetic and the lost carry is recovered from the signs.

// float(a - b), correctly rounded, for any int32 a and b (the exact difference has 33 bits).
float exact_difference(int a, int b) {
    const int d = a - b;                          // exact modulo 2^32
    if (((a ^ b) & (a ^ d)) >= 0) {
        return float(d);                          // no signed overflow: d is the difference
    }
    // Overflow: the true value is d + 2^32 (a >= 0) or d - 2^32 (a < 0); both magnitudes
    // fit uint32, and uint -> float conversion is correctly rounded.
    return a >= 0 ? float(uint(d)) : -float(uint(-d));
}

// Q8TA_NARROW_K4 and below (K <= 65792), |acc - zw| <= 255*128*K < 2^31: the int32
// difference is exact and exact_difference's overflow repair can be left out.
const uint Q8TA_NARROW_K4 = 16448u;

// One int8 output from an int32 accumulator; zw = zp_x * wsum[n]; narrow: K <= 65792.
int requantize(int acc, int zw, float mult, float offs, bool narrow) {
    // precise: two float32 roundings (multiply, then add), never a fused multiply-add.
    precise float v = (narrow ? float(acc - zw) : exact_difference(acc, zw)) * mult + offs;
    // |v| may be huge: clamp in float before converting (float -> int overflow is undefined).
    // relu (max(v, 0) before rounding) is the lower bound zp_out instead of -128: rounding
    // and adding zp_out are monotonic, and a v <= 0 gives at most zp_out either way.
    const float lo = pc.relu != 0u ? float(pc.zp_out) : -128.0;
    return int(clamp(roundEven(v) + float(pc.zp_out), lo, 127.0));
}

// Four consecutive channels (4*n4 .. 4*n4+3) of one row, packed little endian into one int32
// word; channels at or past n_channels are padding and become 0 (layout rule).
// zw = zp_x * wsum of the four channels.
int requantize_pack(ivec4 acc, uint n4, uint n_channels, ivec4 zw, vec4 mult, vec4 offs, bool narrow) {
    int word = 0;
    for (uint c = 0u; c < 4u; ++c) {
        if (4u * n4 + c < n_channels) {
            word |= (requantize(acc[c], zw[c], mult[c], offs[c], narrow) & 0xFF) << (8u * c);
        }
    }
    return word;
}
