{#- Shared by the coopmat GEMMs (q4gsw_coopmat, q8ta_linear_coopmat): the workgroup's
    BM x BN output tile as WM x WN subgroups, each owning (BM / WM) x (BN / WN) outputs as
    FM x FN accumulators of 16 x 16. Operands come from shared memory, staged per K step
    as rows of 32 * KD bytes: A row-major (BM rows of x), B column-major (BN channels, each
    its 32 * KD bytes of k), each row padded by 16 bytes to PITCH (80 bytes for KD = 2: the
    16-byte-aligned stride coopMatLoad wants, and 8 rows of a fragment fall on distinct
    banks). A step is KD fragments deep in k: KD x 16 fp16 or KD x 32 int8; KD = 2 unless
    the tile sets it. The shared arrays hold vectors of
    the operand type itself (SH: f16vec4 or i8vec4, UNIT bytes each), never reinterpreted
    words: coopMatLoad reads its own component type. The epilogue stages accumulators in a
    separate array of their type. Import `with context`; the template sets AT (operand
    type), CT (accumulator type), FK (fragment k), SH, UNIT, BM, BN, WM, WN; optionally SO
    (the staging array's type, default CT) and CLOSE_HOOK (main_loop then also calls
    `caller("close", ks, buf)` after each fragment ks of a step: per-group epilogues). -#}
{% set KD = KD | default(2) %}  {# fragments per K step #}
{% set PITCH = (32 * KD + 16) // UNIT %}
{% set NBUF = NBUF | default(2) %}
{% set KS = 32 // UNIT %}
{% set NW = WM * WN %}
{% set NS = SLOTS | default(NW) %}  {# epilogue staging slots: NW / NS rounds of NS subgroups #}
{% set FM = BM // WM // 16 %}
{% set FN = BN // WN // 16 %}

{% macro types() %}
#define CM_A coopmat<{{ AT }}, gl_ScopeSubgroup, 16, {{ FK }}, gl_MatrixUseA>
#define CM_B coopmat<{{ AT }}, gl_ScopeSubgroup, {{ FK }}, 16, gl_MatrixUseB>
#define CM_C coopmat<{{ CT }}, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>
shared {{ SH }} sa[{{ NBUF * BM * PITCH }}];  // [buffer][BM rows][PITCH]
shared {{ SH }} sb[{{ NBUF * BN * PITCH }}];  // [buffer][BN channels][PITCH]
shared {{ SO | default(CT) }} so[{{ NS * 256 }}];  // the epilogue's staging: NS slots of 16 x 16
{% endmacro %}

{% macro declare_acc() %}
{% for i in range(FM) %}{% for j in range(FN) %}
    CM_C acc_{{ i }}_{{ j }} = CM_C({{ CT }}(0));
{% endfor %}{% endfor %}
{% endmacro %}

{# One K step from shared buffer `buf`: this subgroup's FM x FN fragments, two deep. #}
{% macro mma_step(buf, hook=none) %}
        {
            const uint a_base = {{ buf }} * {{ BM * PITCH }}u + wm * {{ (BM // WM) * PITCH }}u;
            const uint b_base = {{ buf }} * {{ BN * PITCH }}u + wn * {{ (BN // WN) * PITCH }}u;
{% for ks in range(KD) %}
            {
{% for i in range(FM) %}
                CM_A a{{ i }};
                coopMatLoad(a{{ i }}, sa, a_base + {{ i * 16 * PITCH + KS * ks }}u, {{ PITCH }}u, gl_CooperativeMatrixLayoutRowMajor);
{% endfor %}
{% for j in range(FN) %}
                CM_B b{{ j }};
                coopMatLoad(b{{ j }}, sb, b_base + {{ j * 16 * PITCH + KS * ks }}u, {{ PITCH }}u, gl_CooperativeMatrixLayoutColumnMajor);
{% endfor %}
{% for i in range(FM) %}{% for j in range(FN) %}
                acc_{{ i }}_{{ j }} = coopMatMulAdd(a{{ i }}, b{{ j }}, acc_{{ i }}_{{ j }});
{% endfor %}{% endfor %}
            }
{% if hook %}
{{ hook("close", ks, buf) }}
{% endif %}
{% endfor %}
        }
{% endmacro %}

{# The K loop, software-pipelined over two shared buffers. The template supplies, through
   `caller(kind, set, arg)`: ("fetch", set, step) global loads of K step `step` (a GLSL
   expression) into register set `set`; ("store", set, buf) those registers into shared
   buffer `buf`, dequantizing or transposing on the way. `steps` (GLSL) is the step count.
   PF = 1: step j + 1's loads are issued before step j's MMAs and stored after them.
   PF = 2: two register sets; step j + 2's loads are issued at step j, so each load has a
   whole step of MMAs to arrive before it is stored (L2 latency is otherwise exposed at
   every step: one workgroup per SM, one barrier per step). The loop is unrolled by two so
   that register sets and buffers are chosen statically. NBUF = 1 (tiles too large for two
   buffers in 48 KiB): one shared buffer, stored after a second barrier; with PF = 1 the
   loop is not unrolled. #}
{% macro main_loop(PF) %}
{% if NBUF == 1 and PF == 1 %}
{{ caller("fetch", 0, "0u") }}
{{ caller("store", 0, "0u") }}
    barrier();
    for (uint jj = 0u; jj < steps; ++jj) {
        if (jj + 1u < steps) {
{{ caller("fetch", 0, "jj + 1u") }}
        }
{{ mma_step("0u", caller if CLOSE_HOOK | default(false) else none) }}
        barrier();  // every subgroup is done with the buffer
        if (jj + 1u < steps) {
{{ caller("store", 0, "0u") }}
        }
        barrier();
    }
{% else %}
{{ caller("fetch", 0, "0u") }}
{{ caller("store", 0, "0u") }}
{% if PF == 2 %}
    if (steps > 1u) {
{{ caller("fetch", 1, "1u") }}
    }
{% endif %}
    barrier();
    for (uint j = 0u; j < steps; j += 2u) {
{% for p in range(2) %}
{% if p == 1 %}
        if (j + 1u >= steps) {
            break;
        }
{% endif %}
        {
            const uint jj = j + {{ p }}u;
{% if PF == 2 %}
            if (jj + 2u < steps) {
{{ caller("fetch", p, "jj + 2u") }}
            }
{% else %}
            if (jj + 1u < steps) {
{{ caller("fetch", 0, "jj + 1u") }}
            }
{% endif %}
{{ mma_step((p if NBUF == 2 else 0) ~ "u", caller if CLOSE_HOOK | default(false) else none) }}
{% if NBUF == 1 %}
            barrier();  // every subgroup is done with the buffer
{% endif %}
            if (jj + 1u < steps) {
{{ caller("store", (1 - p) if PF == 2 else 0, ((1 - p) if NBUF == 2 else 0) ~ "u") }}
            }
            barrier();
        }
{% endfor %}
    }
{% endif %}
{% endmacro %}

{# Epilogue: for each fragment (i, j), in rounds r of NS subgroups (SLOTS < NW: 16-subgroup
   tiles leave no room for a slot each), subgroup r * NS + s stores its accumulator row-major
   into slot s of `so` (element e at so[256 s + e]), then the caller's block reads the slots
   back with the whole workgroup (`caller(i, j, r)`). The fp16 GEMM's 16-subgroup tiles have
   8 slots, so own_fragments would leave half the subgroups idle in each round: it measured
   103.1 us there against 100.0 with this (M = 512, N = K = 4096). #}
{% macro each_fragment() %}
{% for i in range(FM) %}{% for j in range(FN) %}
{% for r in range(NW // NS) %}
    barrier();  // the previous readers are done with so
{% if NS < NW %}
    if (gl_SubgroupID / {{ NS }}u == {{ r }}u) {  // uniform per subgroup
        coopMatStore(acc_{{ i }}_{{ j }}, so, (gl_SubgroupID % {{ NS }}u) * 256u, 16u, gl_CooperativeMatrixLayoutRowMajor);
    }
{% else %}
    coopMatStore(acc_{{ i }}_{{ j }}, so, gl_SubgroupID * 256u, 16u, gl_CooperativeMatrixLayoutRowMajor);
{% endif %}
    barrier();
    {
{{ caller(i, j, r) }}
    }
{% endfor %}
{% endfor %}{% endfor %}
{% endmacro %}

{# Epilogue, each subgroup on its own fragments: for each fragment (i, j) the subgroup stores
   its accumulator row-major into its own slot of `so` (elements slot .. slot + 255) and its
   32 invocations read it back in the caller's block (`caller(i, j)`); only subgroup barriers
   order this, so subgroups run their epilogues side by side. Where there are fewer slots
   than subgroups (SLOTS < NW), rounds of SLOTS subgroups take turns, the rest waiting at a
   workgroup barrier. The int8 GEMM took 187 us with each_fragment (two workgroup barriers per
   fragment, half the invocations idle) and 166 with this at M = 2048, N = K = 4096 (H200,
   docs/tuning.md §Epilogues). #}
{% macro own_fragments() %}
{% for r in range(NW // NS) %}
{% if NS < NW %}
    barrier();  // the previous round is done with so
    if (gl_SubgroupID / {{ NS }}u == {{ r }}u) {  // uniform per subgroup
{% else %}
    {
{% endif %}
        const uint slot = (gl_SubgroupID % {{ NS }}u) * 256u;
{% for i in range(FM) %}{% for j in range(FN) %}
        coopMatStore(acc_{{ i }}_{{ j }}, so, slot, 16u, gl_CooperativeMatrixLayoutRowMajor);
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        {
{{ caller(i, j) }}
        }
        subgroupBarrier();  // every invocation has read the slot before the next store
{% endfor %}{% endfor %}
    }
{% endfor %}
{% endmacro %}
