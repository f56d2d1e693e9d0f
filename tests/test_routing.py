"""Every variant routing can pick is declared and runs on the device it was picked for.

Routing runs for real (the ops' `plan`, `pick_variant`,
`describe_variants`) against a fake device: capabilities from a profile, `kernel()` that
accepts only declared variants whose required features the profile has, a batch that records
what was dispatched. No Vulkan device is needed, so every profile is covered on any machine.
"""
from __future__ import annotations

import functools
import itertools
import json
import types

import numpy as np
import pytest

from vkq import shaderlib
from vkq.ops import q4gsw_linear as q4
from vkq.ops import q8ta_linear as q8
from vkq.ops.common import COOPMAT_BY_KERNEL
from vkq.ops import qta8a_qga4w_linear as qta
from vkq.ops import contract, rms_norm, variant_choices
from vkq.runtime.capabilities import Capabilities, CoopMatShape

KIB = 1024
#: The cooperative-matrix shapes the coopmat GEMMs use, as the H200 lists them.
TENSOR_CORES = (CoopMatShape(16, 16, 16, "float16", "float16", "float32", "float32"),
                CoopMatShape(16, 16, 32, "sint8", "sint8", "sint32", "sint32"))
PROFILES = [dict(max_shared_memory=smem * KIB, subgroup_shuffle=shuffle,
                 subgroup_arithmetic=arith, integer_dot_product=dot,
                 cooperative_matrix=TENSOR_CORES if coop else ())
            for smem, shuffle, arith, dot, coop in itertools.product(
                (16, 32, 48), (True, False), (True, False), (True, False), (True, False))
            ]  # tensor cores with 16 and 32 KiB too: routing must keep to what fits
PROFILE_IDS = ["{max_shared_memory}B-shuffle{subgroup_shuffle:d}-arith{subgroup_arithmetic:d}-"
               "dot{integer_dot_product:d}".format(**p) + ("-coopmat" if p["cooperative_matrix"] else "")
               for p in PROFILES]

Q4_MS = (1, 2, 5, 24, 25, 33, 129)
Q4_GROUP_SIZES = (8, 16, 32, 64, 128)
Q4_SHAPES = ((1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336), (24, 40))
KERNELS = ("auto", "gemv", "gemm", "coopmat")
Q8_MS = (1, 2, 5, 256, 257)
QTA_MS = (1, 2, 3, 25, 65, 257)
Q8_SHAPES = ((1024, 4096), (4096, 4096), (q8.MANY_N, 4096), (4096, q8.LONG_K), (9, 16))


def fake_caps(profile: dict) -> types.SimpleNamespace:
    """A Capabilities stand-in: the profile's axes (tensor cores: the shapes listed, or
    none), every other feature present, 32-wide subgroups."""
    features = {f: True for f in shaderlib.KNOWN_FEATURES}
    caps = types.SimpleNamespace(**dict(features, **profile), subgroup_size=32,
                                 max_workgroup_count=(65535, 65535, 65535))
    caps.has_coopmat = functools.partial(Capabilities.has_coopmat, caps)
    return caps


class FakeBuffer:
    def __init__(self, nbytes: int):
        self.nbytes, self.closed = nbytes, False

    def close(self) -> None:
        self.closed = True


class FakeBatch:
    def __init__(self, device: "FakeDevice"):
        self.device = device

    def dispatch(self, kernel, groups, *, buffers, push) -> None:
        self.device.dispatched.append(kernel.name)

    def __enter__(self) -> "FakeBatch":
        return self

    def __exit__(self, *exc) -> None:
        pass


class FakeDevice:
    """`kernel()` fails as the real Device would for an undeclared or unsupported variant."""

    def __init__(self, profile: dict):
        self.caps = fake_caps(profile)
        self.dispatched: list[str] = []

    def kernel(self, variant: str, **spec):
        if variant not in shaderlib.declared_variants():
            raise AssertionError(f"routed to undeclared variant {variant!r}")
        info = shaderlib.variant_info(variant)
        missing = [f for f in info.requires if not getattr(self.caps, f)]
        if missing:
            raise AssertionError(f"routed to {variant!r}, which needs {missing}")
        if info.shared_bytes > self.caps.max_shared_memory:
            raise AssertionError(f"routed to {variant!r}, which needs {info.shared_bytes} bytes "
                                 f"of shared memory (the profile has {self.caps.max_shared_memory})")
        return types.SimpleNamespace(name=variant, info=info)

    def buffer(self, nbytes: int) -> FakeBuffer:
        return FakeBuffer(nbytes)

    def batch(self) -> FakeBatch:
        return FakeBatch(self)


def q4_weight(dev: FakeDevice, n: int, k: int, gs: int, asym: bool, half: bool) -> q4.Q4gswWeight:
    return q4.Q4gswWeight(dev, (n, k), gs, FakeBuffer(16), FakeBuffer(16),
                          FakeBuffer(16) if asym else None,
                          param_dtype="float16" if half else "float32", fp16_exponent=-12)


def route_q4gsw(dev: FakeDevice, w: q4.Q4gswWeight, m: int, kernel: str) -> list[str] | None:
    """The kernels the op's plan dispatches (each checked through dev.kernel), or None where
    it refuses kernel='gemv' for M > 1 (no GEMV shape with rows of x on this device)."""
    op = contract.get("q4gsw_linear")
    x = contract.TensorSpec.dense((m, w.shape[1]))
    try:
        plan = op.plan({"x": x}, {"kernel": kernel, "has_bias": False}, w, dev)
    except ValueError as e:
        if kernel == "gemv" and m > 1 and "subgroup shuffles" in str(e):
            return None
        if kernel == "coopmat" and q4.coopmat_capable(dev.caps) is not None and "kernel='coopmat'" in str(e):
            return None  # no tensor cores, or too little shared memory for the coopmat tiles
        raise
    for name in plan.variants:
        dev.kernel(name)
    return plan.variants


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_q4gsw_routes_to_declared_supported_variants(profile):
    dev = FakeDevice(profile)
    routed: set[str] = set()
    refused = 0
    for (n, k), gs, asym, half in itertools.product(Q4_SHAPES, Q4_GROUP_SIZES, (False, True),
                                                    (False, True)):
        if k % gs:
            continue
        w = q4_weight(dev, n, k, gs, asym, half)
        for m, kernel in itertools.product(Q4_MS, KERNELS):
            names = route_q4gsw(dev, w, m, kernel)
            if names is None:
                refused += 1
                continue
            assert names, (n, k, gs, asym, half, m, kernel)
            routed.update(names)
    # every kernel is reached on every profile (the coopmat GEMM where the device has tensor
    # cores and the shared memory its small tile needs, 24 KiB), and kernel='gemv' with rows
    # of x is refused exactly where no batch shape fits (no shuffles, or too little shared
    # memory), kernel='coopmat' where the coopmat GEMM cannot run
    assert any(n.startswith("q4gsw_gemv_") for n in routed)
    assert any(n.startswith("q4gsw_gemm_") for n in routed)
    coop = bool(profile["cooperative_matrix"]) and profile["max_shared_memory"] >= 32 * KIB
    assert (q4.coopmat_capable(dev.caps) is None) == coop
    assert any(n.startswith("q4gsw_coopmat_") for n in routed) == coop
    batch_fits = profile["subgroup_shuffle"] and profile["max_shared_memory"] >= 32 * KIB
    assert (refused == 0) == (batch_fits and coop)


def test_q4gsw_fallback_on_16kib_with_shuffles_is_declared():
    # The live bug: shuffles but 16 KiB of shared memory routed asymmetric or
    # non-multiple-of-32 group sizes to GEMV_FALLBACK names that were never declared.
    dev = FakeDevice(dict(max_shared_memory=16 * KIB, subgroup_shuffle=True,
                          subgroup_arithmetic=True, integer_dot_product=True))
    # routed shapes over 16 KiB: rw2r2u1k4x (N <= 2048) and rw4r4u1k8x (K >= 8192)
    for (n, k), gs, asym, half in itertools.product(((1024, 4096), (4096, 14336)), (16, 32),
                                                    (False, True), (False, True)):
        assert q4.pick_gemv_config(n, k).shared_bytes > 16 * KIB
        names = route_q4gsw(dev, q4_weight(dev, n, k, gs, asym, half), 1, "auto")
        mode = "word" if gs == 32 else "comp"
        assert names == [f"q4gsw_gemv_{'asym' if asym else 'sym'}_{mode}_rw1r4u1k2"
                         + ("_p16" if half else "")]


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_q8ta_routes_to_declared_supported_variants(profile):
    dev = FakeDevice(profile)
    op = contract.get("q8ta_linear")
    attrs = {"kernel": "auto", "variant": None, "zp_x": 3, "zp_out": -2, "relu": False}
    routed = set()
    for (n, k), m, kernel in itertools.product(Q8_SHAPES, Q8_MS, ("auto", "gemv", "gemm", "coopmat")):
        path = q8.route(kernel, m)
        x = contract.TensorSpec((m, k), np.dtype(np.int8), q8.LAYOUT[path])
        weight = types.SimpleNamespace(n=n, k=k)
        if kernel == "coopmat" and not q8.coopmat_capable(dev.caps):
            with pytest.raises(ValueError, match="kernel='coopmat'"):
                op.plan({"x": x}, dict(attrs, kernel=kernel), weight, dev)
            continue
        plan = op.plan({"x": x}, dict(attrs, kernel=kernel), weight, dev)
        assert len(plan.variants) == 1 and plan.variants[0] in q8.path_variants(path)
        dev.kernel(plan.variants[0])
        # "gemm" is the integer-dot GEMM, "coopmat" the tensor-core one, "auto" either
        forced = COOPMAT_BY_KERNEL[kernel]
        assert plan.variants[0] == q8.pick_variant(path, dev.caps, m, n, k, coopmat=forced)
        if path == q8.GEMM and forced is not None:
            assert plan.variants[0].startswith(q8.COOPMAT_FAMILY) == forced
        routed.add(plan.variants[0])
    assert {q8.pick_variant(p, dev.caps) for p in (q8.GEMV, q8.GEMM)} <= routed
    coop = any(v.startswith(q8.COOPMAT_FAMILY) for v in routed)
    smem = profile["max_shared_memory"]
    assert coop == (bool(profile["cooperative_matrix"]) and smem >= 32 * KIB)  # small tile: 24 KiB
    if coop:  # both tiles (the big one once a shape makes enough of them and it fits: 44 KiB)
        assert {q8.pick_variant(q8.GEMM, dev.caps, m, n) for m, n in ((257, 4096), (5, 9))} == {
            f"q8ta_linear_coopmat_{q8.COOPMAT_BIG_TILE if smem >= 48 * KIB else q8.COOPMAT_SMALL_TILE}",
            f"q8ta_linear_coopmat_{q8.COOPMAT_SMALL_TILE}"}


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_qta8a_routes_to_declared_supported_variants(profile):
    """act_quant='int8': the quantize pass then an int8 GEMV or GEMM (integer dot or its
    fallback, per the profile), or at M <= WEIGHT_ONLY_MAX_ROWS under "auto" the q4gsw path."""
    dev = FakeDevice(profile)
    op = contract.get(qta.Qta8aQga4wLinear.name)
    routed: set[str] = set()
    for (n, k), gs, asym, half in itertools.product(Q4_SHAPES, Q4_GROUP_SIZES, (False, True),
                                                    (False, True)):
        if k % gs:
            continue
        w = q4_weight(dev, n, k, gs, asym, half)
        for m, kernel in itertools.product(QTA_MS, KERNELS):
            x = contract.TensorSpec.dense((m, k))
            if kernel == "coopmat" and qta.coopmat_refusal(w, dev.caps) is not None:
                with pytest.raises(ValueError, match="kernel='coopmat'"):
                    op.plan({"x": x}, {"kernel": kernel, "has_bias": False}, w, dev)
                continue
            plan = op.plan({"x": x}, {"kernel": kernel, "has_bias": False}, w, dev)
            for name in plan.variants:
                dev.kernel(name)
            routed.update(plan.variants)
            if kernel == "auto" and m <= qta.WEIGHT_ONLY_MAX_ROWS:
                assert plan.variants[0].startswith("q4gsw_gemv_")
            else:
                assert plan.variants[0] == qta.quantize_variant(dev.caps) and len(plan.variants) == 2
                if plan.variants[1].startswith("qta8a_coopmat_"):  # int8 tensor cores
                    assert q8.coopmat_capable(dev.caps) and gs % 32 == 0
                    continue
                dot = "_idot_" if profile["integer_dot_product"] else "_fallback_"
                assert dot in plan.variants[1]
    assert any(n.startswith("qta8a_gemv_") for n in routed)
    assert any(n.startswith("qta8a_gemm_") for n in routed)
    tensor_cores = any(n.startswith("qta8a_coopmat_") for n in routed)
    assert tensor_cores == q8.coopmat_capable(dev.caps)


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_rms_norm_and_described_variants_are_declared_and_supported(profile):
    dev = FakeDevice(profile)
    for width in (1, 2, 3, 4, 5, 4096, 4097):
        dev.kernel(rms_norm.pick_variant(width, dev.caps))
    for situation, variant in variant_choices(dev.caps).items():
        dev.kernel(variant)


# -- the variant families themselves -------------------------------------------------------------
def test_every_declared_variant_round_trips_through_variant_name():
    fams = shaderlib.families()
    names = [v.name for f in fams.values() for v in f.variants]
    assert len(names) == len(set(names)) == len(shaderlib.declared_variants())
    for fam in fams.values():
        for v in fam.variants:
            assert shaderlib.variant_name(fam.name, **v.values) == v.name
            assert shaderlib.declared_variants()[v.name] == (fam.template, v.params)


def test_gemv_shape_axis_matches_gemv_config_tags():
    # SHAPE values are GemvConfig tags: routing formats cfg.tag, the template gets the params
    for v in shaderlib.families()["q4gsw_gemv"].variants:
        assert q4.GemvConfig.from_params(v.params).tag == v.values["SHAPE"]


def test_every_routing_table_shape_is_declared_for_every_weight_kind():
    fam = shaderlib.families()["q4gsw_gemv"]
    tables = [(c, True) for _, _, c in q4.GEMV_CONFIGS + q4.GEMV_BATCH_CONFIGS]
    tables += [(q4.GEMV_FALLBACK, True), (q4.GEMV_FALLBACK, False)]
    for (cfg, sub), asym, group, half in itertools.product(tables, (False, True),
                                                           ("word", "comp"), (False, True)):
        for norm in (False, True) if cfg.mr == 1 else (False,):  # one row: rms_norm folded in
            fam.variant(ASYM=asym, GROUP=group, SHAPE=cfg.tag, SUBGROUP=sub, P16=half, NORM=norm)


def test_undeclared_combinations_and_bad_values_raise():
    with pytest.raises(shaderlib.ShaderError, match="declares no variant.*q4gsw_gemm_asym_16x64"):
        shaderlib.variant_name("q4gsw_gemm", ASYM=True, TILE="16x64", P16=False)
    with pytest.raises(shaderlib.ShaderError, match="not a value of the axis"):
        shaderlib.variant_name("rms_norm", VEC4=1, SUBGROUP=False)  # 1 is not True
    with pytest.raises(shaderlib.ShaderError, match="has axes"):
        shaderlib.variant_name("rms_norm")
    with pytest.raises(shaderlib.ShaderError, match="unknown variant family"):
        shaderlib.variant_name("rms_norm_vec4x")
    assert shaderlib.variant_name("q4gsw_gemm_reduce") == "q4gsw_gemm_reduce"


@pytest.fixture
def family_file(tmp_path, monkeypatch):
    """Write one family to an isolated template tree; returns the parsed families."""
    monkeypatch.setattr(shaderlib, "TEMPLATE_DIR", tmp_path)
    (tmp_path / "t.comp.j2").write_text("#version 450\n")

    def parse(family: dict) -> dict:
        (tmp_path / "t.variants.json").write_text(json.dumps({"families": [family]}))
        shaderlib.families.cache_clear()
        return shaderlib.families()

    yield parse
    shaderlib.families.cache_clear()


def test_family_declare_blocks_are_unions_of_products(family_file):
    fams = family_file({"family": "t", "name": "t_{A}_{B}", "params": {"WG": 64},
                        "axes": {"A": ["x", "y"], "B": [1, {"value": 2, "name": "two", "params": {}}]},
                        "declare": [{"A": ["x"]}, {"B": [1]}]})
    assert {v.name: v.params for v in fams["t"].variants} == {
        "t_x_1": {"WG": 64, "A": "x", "B": 1}, "t_x_two": {"WG": 64, "A": "x"},
        "t_y_1": {"WG": 64, "A": "y", "B": 1}}
    with pytest.raises(shaderlib.ShaderError, match="declares no variant.*'t_y_two'"):
        fams["t"].variant(A="y", B=2)


@pytest.mark.parametrize("family,message", [
    ({"family": "t", "name": "t_{A}", "axes": {"A": ["x"], "B": ["y", "z"]}}, "both named"),
    ({"family": "t", "name": "t_{A}", "axes": {"A": ["x"]}, "declare": [{"A": ["w"]}]},
     "not a value of the axis"),
    ({"family": "t", "name": "t_{A}", "axes": {"A": [True]}}, "needs a 'name'"),
    ({"family": "t", "name": "t_{A}", "axes": {"A": ["x"]}, "params": {"A": 1}}, "set twice"),
    ({"family": "t", "name": "t_{C}", "axes": {"A": ["x"]}}, "unknown axis"),
])
def test_family_declaration_errors(family_file, family, message):
    with pytest.raises(shaderlib.ShaderError, match=message):
        family_file(family)


def test_a_device_with_16kib_of_shared_memory_runs_the_fallback(device, monkeypatch):
    # End to end on the real device, its shared memory lowered to the Vulkan minimum: the
    # routed shape of N = 1024 does not fit, so every weight kind runs the fallback shape.
    import dataclasses

    import numpy as np

    import vkq
    from test_q4gsw_linear import check, make_weight
    if not device.caps.subgroup_shuffle:
        pytest.skip("the device has no subgroup shuffles")
    monkeypatch.setattr(device, "caps", dataclasses.replace(device.caps, max_shared_memory=16 * KIB))
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    for gs, symmetric in ((16, True), (32, False), (16, False)):
        w = make_weight(1024, 1024, gs, symmetric, seed=gs)
        with vkq.trace() as t:
            y = vkq.linear(x, w, device=device)
        w.release()
        assert t.kernels == [q4.gemv_variant(not symmetric, gs, q4.GEMV_FALLBACK, True, True)]
        check(y, x, w, None)
