// int4 nibble -> fp32 without an int -> float conversion (the q4gsw kernels).
//
// NIB(v, s) is (u - 8) * 2^s for the nibble u at bits s .. s+3 of v (s a literal <= 12),
// exactly: the bits (v & (0xF << s)) | 0x4B000000 are the float 2^23 + u * 2^s (s <= 12 keeps
// the nibble inside the mantissa), and subtracting 2^23 + 8 * 2^s leaves (u - 8) * 2^s. One
// LOP3 and one FADD; the caller folds the 2^-s into the scale (exact).
//
// NIB takes the exponent from `nib_exp`, which main() declares as NIB_EXPONENT. With both the
// mask and 0x4B000000 as literals, NVIDIA's compiler emits two LOP3s per nibble (one immediate
// per instruction), doubling the integer work; an exponent it cannot fold makes it one.
// NIB_EXPONENT is 0x4B000000 whenever pc.k < 2^31, which the host checks.
#define NIB_EXPONENT (0x4B000000u | (pc.k >> 31u))
#define NIB(v, s) (uintBitsToFloat(((v) & (0xFu << (s))) | nib_exp) - (8388608.0 + 8.0 * float(1u << (s))))
//
// NIB1(v, s) is u - 8 itself, with no 2^s factor: the same bits under an exponent lowered by
// s make the float 2^(23-s) + u, and subtracting 2^(23-s) + 8 leaves u - 8 (still one LOP3
// and one FADD). For code whose nibbles meet x before any scale does: there (u - 8) * 2^s
// * x overflowed fp32 at |x| ~ 1e34, where x * w itself is far from overflowing.
#define NIB1(v, s) (uintBitsToFloat(((v) & (0xFu << (s))) | (nib_exp - (uint(s) << 23u))) - (float(1u << (23u - uint(s))) + 8.0))
