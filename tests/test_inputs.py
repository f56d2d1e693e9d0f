"""What vkq accepts and refuses at its entry points (issue 18): checkpoints from other tools,
inconsistent arguments, sizes over a device's limits, and huge inputs."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

import vkq
from vkq import layouts
from vkq.ops import common
from vkq.quantized_weight import half_group_params

MiB = 1 << 20


# ------------------------------------------------------------------ checkpoints from other tools
def test_int8_weights_take_the_full_int8_range():
    q = np.array([[-128, 127, 0, -1]], np.int8)
    w = vkq.QuantizedWeight(q, np.ones(1, np.float32), bits=8)
    assert w.q.min() == -128


@pytest.mark.parametrize("bits", [8, 4])
def test_scales_of_any_finite_value_are_accepted(bits):
    n, k = 3, 16
    shape = (n,) if bits == 8 else (n, 2)
    scales = np.zeros(shape, np.float64)
    scales.flat[1] = -0.25
    scales.flat[2] = -0.0
    q = np.ones((n, k), np.int8)
    w = vkq.QuantizedWeight(q, scales, bits=bits, group_size=None if bits == 8 else 8)
    assert np.array_equal(w.scales, scales.astype(np.float32))
    assert w.dequantize().reshape(-1)[0] == 0.0
    for bad in (np.nan, np.inf, -np.inf, 1e39):  # 1e39: finite in float64, inf in float32
        s = scales.copy()
        s.flat[0] = bad
        with pytest.raises(ValueError, match="scales must be finite"):
            vkq.QuantizedWeight(q, s, bits=bits, group_size=None if bits == 8 else 8)


def test_fp16_parameter_rounding_keeps_zero_and_negative_scales():
    s = np.array([[0.0, -0.375, -0.0, 0.1]], np.float32)
    half_s, _ = half_group_params(s, None)
    assert half_s.tolist() == [[0.0, -0.375, 0.0, np.float32(np.float16(0.1))]]
    assert np.signbit(half_s[0, 2])
    # a non-zero scale that fp16 rounds to 0 (or to a subnormal) would change the weights
    for tiny in (1e-9, 1e-6):
        assert half_group_params(np.array([[1.0, tiny]], np.float32), None) is None


# ------------------------------------------------------------------ inconsistent arguments
def test_quantize_weight_refuses_arguments_int8_ignores():
    W = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="per output channel.*group_size=32"):
        vkq.quantize_weight(W, bits=8, group_size=32)
    with pytest.raises(ValueError, match="per output channel"):
        vkq.QuantizedWeight(np.zeros((4, 64), np.int8), np.ones(4), bits=8, group_size=32)
    with pytest.raises(ValueError, match="param_dtype applies to int4"):
        vkq.quantize_weight(W, bits=8, param_dtype="float16")
    # group_size = K is one group per row, which is what int8 weights are: accepted by both
    a = vkq.quantize_weight(W, bits=8, group_size=64)
    b = vkq.QuantizedWeight(a.q, a.scales, bits=8, group_size=64)
    assert np.array_equal(a.q, vkq.quantize_weight(W, bits=8).q) and b.group_size == 64


def _layers():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 32)).astype(np.float32)
    return (vkq.quantize_weight(W, bits=4, group_size=32),
            vkq.quantize_weight(W, bits=4, group_size=32, symmetric=False),
            vkq.quantize_weight(W, bits=8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_bias_is_refused_by_every_layer_alike(device, bad):
    bias = np.zeros(8, np.float32)
    bias[3] = bad
    x = np.ones((2, 32), np.float32)
    xq = np.ones((2, 32), np.int8)
    q8 = dict(input_scale=0.1, input_zero_point=0, output_scale=0.1, output_zero_point=0)
    w4s, w4a, w8 = _layers()
    calls = [lambda: vkq.linear(x, w4s, bias, device=device),
             lambda: vkq.linear(x, w4a, bias, device=device),
             lambda: vkq.linear(x[:1], w4s, bias, kernel="gemv", device=device),
             lambda: vkq.linear(xq, w8, bias, **q8, device=device)]
    messages = set()
    for call in calls:
        with pytest.raises(ValueError, match="bias must be finite") as e:
            call()
        messages.add(str(e.value))
    assert len(messages) == 1
    with vkq.to_device(x, device=device) as xd:  # device-resident input: same rule
        with pytest.raises(ValueError, match="bias must be finite"):
            vkq.linear(xd, w4s, bias)


def test_device_tensor_of_the_other_activation_kind_says_what_to_pass(device):
    w4, _, w8 = _layers()
    q8 = dict(input_scale=0.1, input_zero_point=0, output_scale=0.1, output_zero_point=0)
    x = np.ones((1, 32), np.float32)
    xq = np.ones((1, 32), np.int8)
    for layout in ("int8_4w", "int8_4h4w"):
        with vkq.to_device(xq, layout=layout, device=device) as xd:
            with pytest.raises(vkq.layouts.LayoutError,
                               match=rf"int4 weight-only linear takes float32 activations; this "
                                     rf"DeviceTensor is int8 in layout '{layout}': pass "
                                     rf"vkq.to_device\(x_float32\) instead"):
                vkq.linear(xd, w4)
    with vkq.to_device(x, device=device) as xd:
        with pytest.raises(vkq.layouts.LayoutError,
                           match=r"int8 linear takes int8 activations .*this DeviceTensor is "
                                 r"float32 in layout 'dense': pass vkq.to_device\(xq, "
                                 r"layout='int8_4w' or 'int8_4h4w'\)"):
            vkq.linear(xd, w8, **q8)
    with vkq.to_device(xq, device=device) as xd:  # int8, but unpacked ("dense")
        with pytest.raises(vkq.layouts.LayoutError, match="int8 in layout 'dense'"):
            vkq.linear(xd, w8, **q8)
        with pytest.raises(TypeError, match="int8 in layout 'dense'.*x_float32"):
            vkq.linear(xd, w4)


# ------------------------------------------------------------------ huge inputs
def _quantize_whole(W, bits, group_size=None, symmetric=True, param_dtype="auto"):
    """quantize_weight as it was before it worked in blocks of rows: the whole weight in
    float64 at once (the oracle for the blocked version)."""
    from vkq.quantized_weight import _group_params
    w = W.astype(np.float64)
    if bits == 8:
        amax = np.abs(w).max(axis=1)
        s = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        return np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int8), s, None
    n, k = w.shape
    g = w.reshape(n, k // group_size, group_size)
    if symmetric:
        amax = np.abs(g).max(axis=2)
        s = _group_params(np.where(amax > 0, amax / 7.0, 1.0), None, param_dtype)[0]
        return np.clip(np.rint(g / s[..., None]), -8, 7).astype(np.int8).reshape(n, k), s, None
    lo, hi = g.min(axis=2), g.max(axis=2)
    s64 = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
    s, z = _group_params(s64, lo + 8.0 * s64, param_dtype)
    u = np.clip(np.rint((g - z[..., None]) / s[..., None]) + 8, 0, 15)
    return (u - 8).astype(np.int8).reshape(n, k), s, z


QUANT_CASES = [dict(bits=8), dict(bits=4, group_size=32), dict(bits=4, group_size=8),
               dict(bits=4, group_size=32, symmetric=False),
               dict(bits=4, group_size=16, symmetric=False, param_dtype="float32")]


@pytest.mark.parametrize("chunk", [1, 1000, 1 << 24])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("kw", QUANT_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_quantize_weight_in_blocks_of_rows_equals_the_whole_matrix(monkeypatch, kw, dtype, chunk):
    # chunk = 1 byte: one row per block; 1000: a few rows, the last block short
    monkeypatch.setattr(vkq.layouts.packed, "CHUNK_BYTES", chunk)
    rng = np.random.default_rng(len(kw))
    W = (rng.standard_normal((37, 64)) * rng.uniform(0.01, 10, (37, 1))).astype(dtype)
    W[5] = 0.0            # an all-zero row: scale 1
    W[7, :32] = 0.0       # an all-zero group
    w = vkq.quantize_weight(W, **kw)
    q, s, z = _quantize_whole(W, **kw)
    np.testing.assert_array_equal(w.q, q)
    np.testing.assert_array_equal(w.scales, s)
    if z is not None:
        np.testing.assert_array_equal(w.zeros, z)


@pytest.mark.parametrize("kw", [QUANT_CASES[i] for i in (0, 1, 3)],
                         ids=lambda kw: "-".join(map(str, kw.values())))
def test_quantize_weight_never_holds_a_float64_copy(monkeypatch, kw):
    """Peak host memory of quantize_weight (numpy reports its allocations to tracemalloc): the
    int8 result, blocks of CHUNK_BYTES, and a few temporaries of the [N, K / gs] parameters,
    below even one float32 copy of W (it was 6x W: a float64 copy of the whole weight and
    float64 temporaries of that size)."""
    import tracemalloc
    monkeypatch.setattr(vkq.layouts.packed, "CHUNK_BYTES", 1 << 20)
    W = np.random.default_rng(0).standard_normal((512, 4096), dtype=np.float32)  # 8 MiB
    tracemalloc.start()
    try:
        w = vkq.quantize_weight(W, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert w.q.nbytes == 2 << 20
    assert peak < W.nbytes, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("pack, q", [
    (vkq.layouts.pack_int4_weight, np.random.default_rng(1).integers(-8, 8, (1024, 2048))),
    (vkq.layouts.pack_int8_weight, np.random.default_rng(2).integers(-128, 128, (1027, 2045)))])
def test_weight_packers_work_in_blocks_of_rows(monkeypatch, pack, q):
    import tracemalloc
    q = q.astype(np.int8)
    whole = pack(q)
    monkeypatch.setattr(vkq.layouts.packed, "CHUNK_BYTES", 1 << 18)
    tracemalloc.start()
    try:
        blocked = pack(q)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for name, a in whole.arrays.items():
        np.testing.assert_array_equal(blocked.arrays[name], a)
    # the result plus a few blocks (it was 2-4 times the result: full-size padded copies)
    assert peak < blocked.nbytes + 6 * (1 << 18), f"peak {peak / 2**20:.2f} MiB"


def test_quantize_weight_refuses_non_finite_rows_by_number(monkeypatch):
    monkeypatch.setattr(vkq.layouts.packed, "CHUNK_BYTES", 512)
    W = np.ones((40, 32), np.float32)
    W[33, 3] = np.nan
    for kw in QUANT_CASES[:2]:
        with pytest.raises(ValueError, match="row 33 has NaN or Inf"):
            vkq.quantize_weight(W, **kw)


def test_impossible_sizes_fail_first_with_a_sizes_message():
    # 2^30 x 2^30: a broadcast view (no memory); the int8 result (1 EiB) cannot exist, and
    # that must be said before any row is read (a blocked pass over it would never end).
    W = np.broadcast_to(np.float32(1), (1 << 30, 1 << 30))
    for kw in (dict(bits=8), dict(bits=4, group_size=32)):
        with pytest.raises(MemoryError, match=r"1152921504606846976 bytes for the int8 values "
                                              r"\[1073741824 x 1073741824\]"):
            vkq.quantize_weight(W, **kw)
    q = np.broadcast_to(np.int8(0), (1 << 30, 1 << 30))  # read-only view of writeable memory
    with pytest.raises(MemoryError, match="copies a writeable q .*hand q over"):
        vkq.QuantizedWeight(q, np.broadcast_to(np.float32(1), (1 << 30,)), bits=8)


def test_quantized_weight_keeps_read_only_memory_without_a_copy(tmp_path):
    q = np.random.default_rng(0).integers(-8, 8, (16, 64)).astype(np.int8)
    s = np.ones((16, 2), np.float32)

    def kept(arr) -> bool:
        w = vkq.QuantizedWeight(arr, s, bits=4, group_size=32)
        assert not w.q.flags.writeable and np.array_equal(w.q, q)
        return np.shares_memory(w.q, arr)

    writeable = q.copy()
    assert not kept(writeable)
    view = writeable.view()
    view.flags.writeable = False
    assert not kept(view)                 # read-only view, but its base can still be written
    handed = q.copy()
    handed.setflags(write=False)
    assert kept(handed)                   # handed over by the caller
    assert kept(np.frombuffer(q.tobytes(), np.int8).reshape(q.shape))  # immutable bytes
    np.save(tmp_path / "q.npy", q)
    assert kept(np.load(tmp_path / "q.npy", mmap_mode="r"))            # read-only file map
    assert not kept(np.load(tmp_path / "q.npy", mmap_mode="c"))        # copy-on-write map
    # a copied q is private: writing the caller's array later changes nothing
    w = vkq.QuantizedWeight(writeable, s, bits=4, group_size=32)
    writeable[:] = 0
    assert np.array_equal(w.q, q)
    # quantize_weight hands its own fresh result over: no second copy
    assert not vkq.quantize_weight(np.ones((4, 32)), bits=4, group_size=32).q.flags.writeable


# ------------------------------------------------------------------ sizes over the device's limits
LAVAPIPE = types.SimpleNamespace(name="llvmpipe (LLVM 15.0.6, 256 bits)",
                                 max_storage_buffer_range=128 * MiB,
                                 max_memory_allocation_size=2048 * MiB)
GPU_4GIB = types.SimpleNamespace(name="a GPU", max_storage_buffer_range=(1 << 32) - 1,
                                 max_memory_allocation_size=1 << 40)


def test_size_check_names_the_tensor_the_limit_and_the_remedy():
    with pytest.raises(ValueError) as e:
        common.check_fits(LAVAPIPE, common.weight_needs(4, (32768, 16384), 32))
    assert str(e.value) == (
        "int4 weight words [32768 x 16384] need 268435456 bytes, over this device's "
        "maxStorageBufferRange of 134217728 bytes (llvmpipe (LLVM 15.0.6, 256 bits)); split the "
        "layer along N (or K), or use a device with larger limits")
    # the largest int4 layer that fits: 128 MiB of words exactly
    common.check_fits(LAVAPIPE, common.weight_needs(4, (16384, 16384), 32, has_zeros=True))
    # GPUs whose range is 4 GiB - 1 need the same care: 4 GiB of int4 words do not fit
    common.check_fits(GPU_4GIB, common.weight_needs(4, (65536, 131040), 32))
    with pytest.raises(ValueError, match=r"int4 weight words \[65536 x 131072\] need "
                                         r"4294967296 bytes, over .* 4294967295 bytes \(a GPU\)"):
        common.check_fits(GPU_4GIB, common.weight_needs(4, (65536, 131072), 32))
    with pytest.raises(ValueError, match=r"int8 weight blocks \[131072 x 32768\] .* 4294967295"):
        common.check_fits(GPU_4GIB, common.weight_needs(8, (131072, 32768)))
    # the smaller of the two limits is the one named
    small_alloc = types.SimpleNamespace(name="x", max_storage_buffer_range=1 << 30,
                                        max_memory_allocation_size=1 << 20)
    with pytest.raises(ValueError, match=r"int8 activations x \[1024 x 1028\] need 1052672 "
                                         r"bytes, over this device's maxMemoryAllocationSize of "
                                         r"1048576 bytes \(x\); pass fewer rows"):
        common.check_fits(small_alloc, [common.packed_need("int8 activations x", "int8_4w",
                                                           (1024, 1028))])
    # sizes are rounded up to 16 bytes as vkq.runtime.Buffer rounds them
    odd_limit = types.SimpleNamespace(name="x", max_storage_buffer_range=MiB + 8,
                                      max_memory_allocation_size=1 << 40)
    common.check_fits(odd_limit, [common.dense_need("y", (MiB,), 1)])
    with pytest.raises(ValueError, match=f"y \\[{MiB + 1}\\] need {MiB + 1} bytes"):
        common.check_fits(odd_limit, [common.dense_need("y", (MiB + 1,), 1)])


@pytest.mark.parametrize("fmt, shape, params", [
    ("int4_uvec4", (5, 33), {}), ("int4_uvec4", (3, 64), {}),
    ("int8_4h4w", (5, 7), {}), ("int8_4w", (3, 9), {}), ("int8_weight_4n4k", (9, 5), {}),
    ("group_params_ng", (3, 48), dict(group_size=16, has_zeros=True)),
    ("group_params_ng", (3, 48), dict(group_size=8, has_zeros=False))])
def test_packed_sizes_from_shapes_match_the_packers(fmt, shape, params):
    q = np.zeros(shape, np.int8)
    if fmt == "group_params_ng":
        ng = shape[1] // params["group_size"]
        zeros = np.zeros((shape[0], ng)) if params["has_zeros"] else None
        packed = layouts.pack_group_params(np.ones((shape[0], ng)), zeros, params["group_size"],
                                           shape[1])
    else:
        packed = {"int4_uvec4": layouts.pack_int4_weight, "int8_4h4w": layouts.pack_int8_4h4w,
                  "int8_4w": layouts.pack_int8_4w,
                  "int8_weight_4n4k": layouts.pack_int8_weight}[fmt](q)
    assert layouts.packed_nbytes(fmt, shape, **params) == \
        {k: a.nbytes for k, a in packed.arrays.items()}


def test_quantize_weight_checks_the_device_before_any_work(device):
    # the 32768 x 16384 layer on lavapipe: a broadcast view, so nothing is allocated
    # and the check must come before quantize_weight touches a row
    W = np.broadcast_to(np.float32(1), (32768, 16384))
    limit = device.caps.max_storage_buffer_range
    if limit >= 32768 * 16384 // 2:
        pytest.skip(f"this device's maxStorageBufferRange ({limit}) holds the layer")
    with pytest.raises(ValueError, match=r"int4 weight words \[32768 x 16384\] need "
                                         r"268435456 bytes, over this device's "
                                         r"maxStorageBufferRange"):
        vkq.quantize_weight(W, bits=4, group_size=32, device=device)
    with pytest.raises(ValueError, match=r"int8 weight blocks \[32768 x 16384\] need 536870912"):
        vkq.quantize_weight(W, bits=8, device=device)


@pytest.fixture
def tiny_device(device, monkeypatch):
    """The device with maxStorageBufferRange cut to 4 KiB, and every weight or activation
    packer made to fail: a size check that comes after packing would trip it."""
    monkeypatch.setattr(device, "caps", dataclasses.replace(device.caps,
                                                            max_storage_buffer_range=4096))

    def packed(*args, **kwargs):
        raise AssertionError("packed before the size check")
    for name in ("pack_int4_weight", "pack_int8_weight", "pack_int8_4w", "pack_int8_4h4w",
                 "pack_group_params"):
        monkeypatch.setattr(layouts, name, packed)
    return device


def test_every_entry_point_checks_sizes_before_packing_or_uploading(tiny_device, monkeypatch):
    dev = tiny_device
    rng = np.random.default_rng(0)
    q8 = dict(input_scale=0.1, input_zero_point=0, output_scale=0.1, output_zero_point=0)
    w4_big = vkq.QuantizedWeight(np.zeros((256, 64), np.int8), np.ones((256, 2)), bits=4,
                                 group_size=32)                     # 8 KiB of words
    w8_big = vkq.QuantizedWeight(np.zeros((64, 128), np.int8), np.ones(64), bits=8)  # 8 KiB
    w4 = vkq.QuantizedWeight(np.zeros((8, 64), np.int8), np.ones((8, 2)), bits=4, group_size=32)
    w8 = vkq.QuantizedWeight(np.zeros((8, 64), np.int8), np.ones(8), bits=8)
    cases = [
        (lambda: vkq.linear(np.ones((1, 64), np.float32), w4_big, device=dev),
         r"int4 weight words \[256 x 64\] need 8192 bytes"),
        (lambda: vkq.linear(np.ones((17, 64), np.float32), w4, device=dev),
         r"float32 activations x \[17 x 64\] need 4352 bytes"),
        (lambda: vkq.linear(np.ones((1, 128), np.int8), w8_big, **q8, device=dev),
         r"int8 weight blocks \[64 x 128\] need 8192 bytes"),
        (lambda: vkq.linear(np.ones((80, 64), np.int8), w8, **q8, device=dev),
         r"int8 activations x \[80 x 64\] need 5120 bytes"),
        (lambda: vkq.rms_norm(rng.standard_normal((3, 400)), np.ones(400), device=dev),
         r"float32 rows x \(and the output\) \[3 x 400\] need 4800 bytes"),
        (lambda: vkq.to_device(np.ones((2, 600), np.float32), device=dev),
         r"activations x \[2 x 600\] need 4800 bytes"),
        (lambda: vkq.to_device(np.ones((5, 1000), np.int8), layout="int8_4h4w", device=dev),
         r"int8 activations x \[5 x 1000\] need 8000 bytes"),
    ]
    before = dev.live_objects()
    for call, message in cases:
        with pytest.raises(ValueError, match=message + r", over this device's "
                                                       r"maxStorageBufferRange of 4096 bytes") as e:
            call()
        remedy = "split the layer" if "weight" in message else "pass fewer rows"
        assert str(e.value).endswith(f"; {remedy}" + str(e.value).split(remedy, 1)[1])
    assert dev.live_objects() == before  # nothing was allocated on the device


def test_int4_output_and_prepacked_arrays_are_checked_too(device, monkeypatch):
    from vkq.ops.q4gsw_linear import prepack_q4gsw
    q = np.zeros((256, 64), np.int8)
    words = layouts.pack_int4_weight(q)  # 8 KiB
    params = layouts.pack_group_params(np.ones((256, 2)), None, 32, 64)
    w_wide = vkq.QuantizedWeight(np.zeros((64, 8), np.int8), np.ones((64, 1)), bits=4,
                                 group_size=8)  # 256 bytes of words, outputs of 64 floats
    monkeypatch.setattr(device, "caps", dataclasses.replace(device.caps,
                                                            max_storage_buffer_range=2048))
    before = device.live_objects()
    with pytest.raises(ValueError, match=r"int4 weight words \[256 x 64\] need 8192 bytes"):
        prepack_q4gsw(words, params, device)
    with pytest.raises(ValueError, match=r"float32 output y \[9 x 64\] need 2304 bytes"):
        vkq.linear(np.ones((9, 8), np.float32), w_wide, device=device)  # x: 288 bytes, fits
    assert device.live_objects() == before
    with vkq.to_device(np.ones((9, 8), np.float32), device=device) as xd:
        before = device.live_objects()
        with pytest.raises(ValueError, match=r"float32 output y \[9 x 64\]"):
            vkq.linear(xd, w_wide)
        assert device.live_objects() == before
