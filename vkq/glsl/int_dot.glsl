// dot4x8(a, b): signed dot product of two int32 words holding 4 packed int8 each
// (byte j = element j, little endian, docs/design.md §2). Template parameter INT_DOT selects:
//  - true:  OpSDot through GL_EXT_spirv_intrinsics (glslang 12 has no GL_EXT_integer_dot_product).
//           The plain form, `acc + dot`, not OpSDotAccSat: the saturating one is emulated on
//           NVIDIA and 5.2x slower (docs/design.md §1); callers bound K so int32 cannot overflow.
//  - false: bytes sign-extended and multiplied in int32; bit-identical results.
{% if INT_DOT %}
{{ require("integer_dot_product") }}
#extension GL_EXT_spirv_intrinsics : require
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6018, 6019], id = 4450)
int dotPacked4x8EXT(int a, int b, spirv_literal int fmt);

int dot4x8(int a, int b) {
    return dotPacked4x8EXT(a, b, 0);  // 0 = PackedVectorFormat4x8Bit
}
{% else %}
ivec4 unpack_i8x4(int w) {
    return ivec4(w << 24, w << 16, w << 8, w) >> 24;  // arithmetic shift sign-extends
}

int dot4x8(int a, int b) {
    ivec4 p = unpack_i8x4(a) * unpack_i8x4(b);
    return p.x + p.y + p.z + p.w;
}
{% endif %}
