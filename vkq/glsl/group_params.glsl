// Group parameters of the q4gsw kernels: scales (and zeros for asymmetric weights), [N, n_groups]
// row-major ("group_params_ng"), read as PARAM(t_scales, i) / PARAM(t_zeros, i).
//
// P16: the weight stores them as fp16, two per 32-bit word (element i in bits 16*(i%2)..),
// which the host does only when fp16 holds every value exactly (vkq.layouts.fits_half), so
// the kernels compute with the same fp32 numbers either way while streaming half the bytes.
// Read through uint words rather than a float16_t buffer: no 16-bit storage feature needed.
{% set P16 = P16 | default(false) %}
{{ buffer("t_scales", "uint" if P16 else "float") }}
{% if ASYM %}
{{ buffer("t_zeros", "uint" if P16 else "float") }}
{% endif %}
{% if P16 %}
#define PARAM(buf, i) unpackHalf2x16(buf[(i) >> 1u] >> (((i) & 1u) << 4u)).x
{% else %}
#define PARAM(buf, i) buf[i]
{% endif %}
