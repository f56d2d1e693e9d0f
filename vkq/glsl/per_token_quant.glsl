// Per-token asymmetric int8 quantization (docs/design.md §2), bit for bit PyTorch's
// quantized_decomposed.choose_qparams_per_token_asymmetric + quantize_per_token in float32:
//
//   lo = min(min(x), 0), hi = max(max(x), 0)
//   scale = max((hi - lo) / 255, eps)            eps = 2^-23 (float32 eps)
//   dmin = lo / scale, dmax = hi / scale
//   zp = rint(clamp((-128 + dmin) + (127 + dmax) > 0 ? -128 - dmin : 127 - dmax, -128, 127))
//   q = clamp(rint(x * (1 / scale) + zp), -128, 127)
//
// Every operation is one float32 rounding, in this order: the products and sums are `precise`
// (never contracted into an fma), and the divisions go through div_rn, because GLSL's `/` is
// not correctly rounded on NVIDIA (Vulkan allows 2.5 ulp; lavapipe happens to be exact).
// A row holding NaN or +-Inf gets scale NaN, zero point 0 and values 0, so whatever consumes
// it (dequantize, the fused linear) gives NaN for that row only.
//
// DIV_SKEW (tests only) moves div_rn's first estimate by that many ulps, so a device whose `/`
// is exact still exercises the correction.
{{ spec_constant("DIV_SKEW", "int", 0) }}

#define PT_EPS uintBitsToFloat(0x34000000u)  // 2^-23
#define PT_NAN uintBitsToFloat(0x7FC00000u)

bool pt_finite(float v) {
    return (floatBitsToUint(v) & 0x7F800000u) != 0x7F800000u;
}

bool pt_isnan(float v) {
    return (floatBitsToUint(v) & 0x7FFFFFFFu) > 0x7F800000u;
}

// 2^n for n in [-126, 127], from its bits (exact).
float pt_pow2(int n) {
    return uintBitsToFloat(uint(n + 127) << 23);
}

// The exact residual a - q*b of a quotient estimate q, for a, b, q in [0.25, 2]: q*b = p + err
// exactly (Dekker's product: Veltkamp splits into 12-bit halves, whose products are exact),
// and a - p is exact (p is within a factor 2 of a). Only correctly rounded float32 adds and
// multiplies, never an fma: Vulkan does not promise a fused one (lavapipe's is not), and
// `precise` keeps the compiler from contracting or reassociating any of them.
float pt_residual(float a, float b, float q) {
    precise const float p = q * b;
    precise const float cq = 4097.0 * q;
    precise const float qh = cq - (cq - q);
    precise const float ql = q - qh;
    precise const float cb = 4097.0 * b;
    precise const float bh = cb - (cb - b);
    precise const float bl = b - bh;
    precise const float err = ((qh * bh - p) + qh * bl + ql * bh) + ql * bl;
    precise const float r = (a - p) - err;
    return r;
}

// RN(a / b) (round to nearest even) for finite normal a, b > 0 with a normal quotient; other
// operands get the hardware quotient (the callers only divide such numbers where the result
// is 0, +-inf or vanishes next to 127 or eps).
//
// a = ma * 2^ea and b = mb * 2^eb with ma, mb in [0.5, 1) (exponent bits), so
// a / b = (ma / mb) * 2^(ea - eb), and scaling a normal float by a power of two is exact. The
// estimate q = ma / mb (the hardware's, a few ulps off at most) is stepped to a neighbour
// while the exact residual r = ma - q*mb says the quotient lies beyond the midpoint on that
// side: with u the ulp above q, ma/mb > q + u/2 <=> r > (u/2) * mb, an exact product (u is a
// power of two). Ties cannot occur (a float32 quotient is never a 25-bit midpoint). Up to eight
// steps correct a start eight ulps away: Vulkan allows `/` 2.5 ulps, and the tests' DIV_SKEW of
// up to 4 ulps lands on top of the hardware's own error (on the H200, skews of -4, +3 and +4
// were left off by one ulp with four steps: its `/` is off by up to ~2 ulps itself).
float div_rn(float a, float b) {
    const uint abits = floatBitsToUint(a), bbits = floatBitsToUint(b);
    const int ea = int(abits >> 23) - 126, eb = int(bbits >> 23) - 126;  // biased 1..254: normal
    const bool in_range = abits >= 0x00800000u && abits < 0x7F800000u
                          && bbits >= 0x00800000u && bbits < 0x7F800000u
                          && ea - eb >= -124 && ea - eb <= 126;
    if (!in_range) {
        return a / b;
    }
    const float ma = uintBitsToFloat((abits & 0x7FFFFFu) | 0x3F000000u);  // [0.5, 1)
    const float mb = uintBitsToFloat((bbits & 0x7FFFFFu) | 0x3F000000u);
    float q = ma / mb;
    if (DIV_SKEW != 0) {
        q = uintBitsToFloat(uint(int(floatBitsToUint(q)) + DIV_SKEW));
    }
    for (uint i = 0u; i < 8u; ++i) {
        const uint bits = floatBitsToUint(q);
        const int e = int(bits >> 23) - 150;                     // ulp above q is 2^e
        precise const float half_up = mb * pt_pow2(e - 1);
        // below a power of two the ulp is half as large
        precise const float half_down = (bits & 0x7FFFFFu) == 0u ? mb * pt_pow2(e - 2) : half_up;
        const float r = pt_residual(ma, mb, q);
        if (r > half_up) {
            q = uintBitsToFloat(bits + 1u);
        } else if (-r > half_down) {
            q = uintBitsToFloat(bits - 1u);
        } else {
            break;  // q is RN(ma / mb): usually at once
        }
    }
    return uintBitsToFloat(floatBitsToUint(q) + uint((ea - eb) << 23));  // q * 2^(ea - eb)
}

// A row's quantization parameters; zp is an integral float in [-128, 127].
struct TokenQParams {
    float scale;
    float inv;   // RN(1 / scale): x is multiplied by it, as PyTorch does
    float zp;
    bool finite; // false: the row held NaN or +-Inf (scale NaN, zp 0, every value 0)
};

// From the row's lo = min(min(x), 0) and hi = max(max(x), 0); hi = +inf marks a row with a
// non-finite value (finite inputs never reach +inf: each value is at most FLT_MAX).
TokenQParams token_qparams(float lo, float hi) {
    TokenQParams p;
    p.finite = pt_finite(hi);
    if (!p.finite) {
        p.scale = PT_NAN;
        p.inv = 0.0;
        p.zp = 0.0;
        return p;
    }
    precise const float range = hi - lo;                  // +inf when it overflows
    p.scale = max(div_rn(range, 255.0), PT_EPS);
    // scale = +inf (PyTorch divides by it too): lo / inf = -0, hi / inf = 0, 1 / inf = 0
    const float dmin = -div_rn(-lo, p.scale);
    const float dmax = div_rn(hi, p.scale);
    precise const float from_min = -128.0 + dmin;
    precise const float from_max = 127.0 + dmax;
    precise const float both = from_min + from_max;
    precise const float zp_min = -128.0 - dmin;
    precise const float zp_max = 127.0 - dmax;
    p.zp = roundEven(clamp(both > 0.0 ? zp_min : zp_max, -128.0, 127.0));
    p.inv = div_rn(1.0, p.scale);
    return p;
}

// One value: clamp(rint(x * inv + zp), -128, 127), two roundings then round half to even.
int quantize_value(float x, TokenQParams p) {
    precise const float t = x * p.inv;
    precise const float u = t + p.zp;
    return p.finite ? int(clamp(roundEven(u), -128.0, 127.0)) : 0;
}

// Four values packed little endian into one int32 word (docs/design.md §2).
int quantize_word(vec4 v, TokenQParams p) {
    return (quantize_value(v.x, p) & 0xFF) | ((quantize_value(v.y, p) & 0xFF) << 8)
           | ((quantize_value(v.z, p) & 0xFF) << 16) | (quantize_value(v.w, p) << 24);
}

// Running range of the values one invocation sees (start: lo = hi = 0, which also applies
// PyTorch's min(., 0) / max(., 0)); non-finite values make hi +inf.
void row_range_add(inout vec2 lo_hi, float v) {
    if (pt_finite(v)) {
        lo_hi = vec2(min(lo_hi.x, v), max(lo_hi.y, v));
    } else {
        lo_hi.y = uintBitsToFloat(0x7F800000u);
    }
}
