"""Tests for vkq.layouts: round trips, exact bit order, padding, validation, format checks.

The reference packers below build every word with explicit shifts, element by
element, straight from the layout docstrings; they share no code with the
vectorized packers they check.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vkq.layouts as L
from vkq.layouts import LayoutError, PackedTensor

settings.register_profile("vkq_layouts", max_examples=60, deadline=None)
settings.load_profile("vkq_layouts")

dims = st.integers(1, 70)


def int8_matrices(lo: int = -128, hi: int = 127, max_rows: int = 70, max_cols: int = 70):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_cols))
    return hnp.arrays(np.int8, shapes, elements=st.integers(lo, hi))


def signed32(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


def ref_word(vals) -> int:
    """Little-endian int32 of 4 int8 values (two's complement bytes)."""
    return signed32(sum((int(v) & 0xFF) << (8 * j) for j, v in enumerate(vals)))


def ref_tile_4x4(x: np.ndarray) -> np.ndarray:
    r, c = x.shape
    r4, c4 = -(-r // 4), -(-c // 4)
    out = np.zeros((r4, c4, 4), dtype=np.int64)
    for a in range(r4):
        for b in range(c4):
            for i in range(4):
                row = 4 * a + i
                vals = [x[row, 4 * b + j] if row < r and 4 * b + j < c else 0 for j in range(4)]
                out[a, b, i] = ref_word(vals)
    return out


def ref_int4(q: np.ndarray) -> np.ndarray:
    n, k = q.shape
    kb = -(-k // 32)
    u = lambda row, kk: int(q[row, kk]) + 8 if kk < k else 8  # noqa: E731
    out = np.zeros((n, kb, 4), dtype=np.int64)
    for row in range(n):
        for b in range(kb):
            for c in range(4):
                k0 = 32 * b + 8 * c
                out[row, b, c] = sum(
                    (u(row, k0 + j) | (u(row, k0 + 4 + j) << 4)) << (8 * j) for j in range(4)
                )
    return out


# ---------------------------------------------------------------- PackedTensor


def test_packed_tensor_is_immutable_contiguous_and_counts_bytes():
    src = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
    p = PackedTensor("x", 1, (3, 2), {"data": src, "extra": np.zeros(5, np.float32)}, {"g": 8})
    assert p.arrays["data"].flags.c_contiguous
    assert p.nbytes == 3 * 2 * 4 + 5 * 4
    with pytest.raises(ValueError):
        p.arrays["data"][0, 0] = 1
    with pytest.raises(TypeError):
        p.arrays["new"] = src  # type: ignore[index]
    owned = np.zeros(4, np.int32)
    PackedTensor("x", 1, (4,), {"data": owned}, {})
    owned[0] = 1  # the caller's own array stays writable


def test_expect_returns_self_for_matching_format():
    p = L.pack_int8_4w(np.zeros((2, 3), np.int8))
    assert p.expect(L.INT8_4W) is p
    assert p.expect("int8_4w", 1) is p


def test_expect_refuses_other_format_with_hint():
    p = L.pack_int8_4w(np.zeros((2, 3), np.int8))
    with pytest.raises(LayoutError) as e:
        p.expect(L.INT8_4H4W)
    msg = str(e.value)
    assert "'int8_4h4w'" in msg and "'int8_4w'" in msg and "pack_int8_4h4w" in msg
    assert isinstance(e.value, ValueError)


def test_expect_refuses_other_version():
    p = L.pack_int8_4w(np.zeros((2, 3), np.int8))
    with pytest.raises(LayoutError, match="v2"):
        p.expect(L.INT8_4W, version=2)


def test_every_format_has_a_repack_hint():
    for fmt, fn in [
        (L.INT8_4H4W, "pack_int8_4h4w"),
        (L.INT8_4W, "pack_int8_4w"),
        (L.INT8_WEIGHT, "pack_int8_weight"),
        (L.INT4_UVEC4, "pack_int4_weight"),
        (L.GROUP_PARAMS_NG, "repack_group_params_ng"),
        (L.GROUP_PARAMS_GN, "pack_group_params_gn"),
    ]:
        assert fn in L.REPACK_HINTS[fmt]


@pytest.mark.parametrize(
    "unpack, packed",
    [
        (L.unpack_int8_4h4w, lambda: L.pack_int8_weight(np.zeros((4, 4), np.int8))),
        (L.unpack_int8_weight, lambda: L.pack_int8_4h4w(np.zeros((4, 4), np.int8))),
        (L.unpack_int8_4w, lambda: L.pack_int8_4h4w(np.zeros((1, 4), np.int8))),
        (L.unpack_int4_weight, lambda: L.pack_int8_4w(np.zeros((4, 32), np.int8))),
        (L.unpack_group_params, lambda: L.pack_int4_weight(np.zeros((4, 32), np.int8))),
        (L.repack_group_params_ng, lambda: L.pack_group_params(np.ones((2, 4)), None, 8, 32)),
    ],
)
def test_unpackers_refuse_other_formats(unpack, packed):
    with pytest.raises(LayoutError):
        unpack(packed())


def test_unpacker_rejects_malformed_arrays():
    good = L.pack_int8_4h4w(np.ones((5, 5), np.int8))
    bad = PackedTensor(good.format, good.version, (9, 5), good.arrays, good.params)
    with pytest.raises(LayoutError, match="expected int32"):
        L.unpack_int8_4h4w(bad)


# ---------------------------------------------------------------- int8 4H4W


def test_4h4w_known_tile():
    x = (16 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.int8)
    data = L.pack_int8_4h4w(x).arrays["data"]
    assert data.shape == (1, 1, 4) and data.dtype == np.int32
    assert [int(w) for w in data[0, 0]] == [0x03020100, 0x13121110, 0x23222120, 0x33323130]


def test_4h4w_sign_bytes():
    x = np.array([[-1, 0, 0, 0], [0, 0, 0, -128], [1, -2, 3, -4], [127, 0, -128, 0]], np.int8)
    data = L.pack_int8_4h4w(x).arrays["data"][0, 0]
    assert int(data[0]) == 0xFF
    assert int(data[1]) == -(2**31)
    assert int(data[2]) == signed32(0xFC03FE01)
    assert int(data[3]) == 0x0080007F


def test_4h4w_block_order_and_padding():
    x = np.arange(1, 5 * 6 + 1, dtype=np.int8).reshape(5, 6)
    p = L.pack_int8_4h4w(x)
    data = p.arrays["data"]
    assert p.shape == (5, 6) and data.shape == (2, 2, 4)
    # Block (0, 1) component 2 = row 2, k 4..7 (k 6, 7 padding).
    assert int(data[0, 1, 2]) == ref_word([x[2, 4], x[2, 5], 0, 0])
    # Block (1, 0): only component 0 (row 4) is real.
    assert int(data[1, 0, 0]) == ref_word(x[4, 0:4])
    assert (data[1, :, 1:] == 0).all()
    # Blocks row-major by (m4, k4): the flat upload has (0,0),(0,1),(1,0),(1,1).
    flat = data.reshape(-1)
    assert int(flat[4]) == ref_word([x[0, 4], x[0, 5], 0, 0])


@given(int8_matrices())
def test_4h4w_round_trip_and_reference(x):
    p = L.pack_int8_4h4w(x)
    assert p.format == "int8_4h4w" and p.version == 1 and p.shape == x.shape
    np.testing.assert_array_equal(p.arrays["data"], ref_tile_4x4(x))
    y = L.unpack_int8_4h4w(p)
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, x)


def test_4h4w_accepts_non_contiguous_input():
    x = np.arange(-64, 64, dtype=np.int8).reshape(8, 16)[:, ::3]
    np.testing.assert_array_equal(L.unpack_int8_4h4w(L.pack_int8_4h4w(x)), x)


# ---------------------------------------------------------------- int8 4W


def test_4w_known_words_and_padding():
    x = np.array([[1, 2, 3, 4, 5, -1], [-128, 0, 0, 0, 7, 0]], np.int8)
    data = L.pack_int8_4w(x).arrays["data"]
    assert data.shape == (2, 2) and data.dtype == np.int32
    assert [int(w) for w in data[0]] == [0x04030201, 0x0000FF05]
    assert [int(w) for w in data[1]] == [0x80, 0x07]


@given(int8_matrices())
def test_4w_round_trip_and_reference(x):
    p = L.pack_int8_4w(x)
    m, k = x.shape
    assert p.arrays["data"].shape == (m, -(-k // 4))
    ref = [[ref_word([x[r, c] if c < k else 0 for c in range(4 * w, 4 * w + 4)])
            for w in range(-(-k // 4))] for r in range(m)]
    np.testing.assert_array_equal(p.arrays["data"], np.array(ref, dtype=np.int64).reshape(m, -1))
    np.testing.assert_array_equal(L.unpack_int8_4w(p), x)


# ---------------------------------------------------------------- int8 weight


def test_int8_weight_known_block_and_wsum():
    q = np.array([[1, 2, 3, 4, 5], [-1, -2, -3, -4, -5], [127, -127, 0, 0, 1]], np.int8)
    p = L.pack_int8_weight(q)
    assert p.format == "int8_weight_4n4k"
    data, wsum = p.arrays["data"], p.arrays["wsum"]
    assert data.shape == (1, 2, 4) and wsum.shape == (4,) and wsum.dtype == np.int32
    assert int(data[0, 0, 0]) == 0x04030201
    assert int(data[0, 1, 2]) == 1
    assert (data[0, :, 3] == 0).all()  # padding channel
    assert wsum.tolist() == [15, -15, 1, 0]


@given(int8_matrices())
def test_int8_weight_round_trip_reference_and_wsum(q):
    p = L.pack_int8_weight(q)
    n = q.shape[0]
    np.testing.assert_array_equal(p.arrays["data"], ref_tile_4x4(q))
    wsum = p.arrays["wsum"]
    assert wsum.shape == (4 * (-(-n // 4)),)
    np.testing.assert_array_equal(wsum[:n], q.astype(np.int64).sum(axis=1))
    assert (wsum[n:] == 0).all()
    np.testing.assert_array_equal(L.unpack_int8_weight(p), q)


def test_int8_weight_accepts_minus_128():
    # PyTorch's and ExecuTorch's int8 weights use the full range; wsum counts -128 exactly.
    q = np.full((3, 5), -128, np.int8)
    q[1] = 127
    p = L.pack_int8_weight(q)
    assert p.arrays["wsum"].tolist() == [-640, 635, -640, 0]
    assert int(p.arrays["data"][0, 0, 0]) == signed32(0x80808080)
    np.testing.assert_array_equal(L.unpack_int8_weight(p), q)


# ---------------------------------------------------------------- int4 uvec4


def test_int4_nibble_positions():
    u = np.arange(32) % 16
    q = (u - 8).astype(np.int8)[None, :]
    data = L.pack_int4_weight(q).arrays["data"]
    assert data.shape == (1, 1, 4) and data.dtype == np.uint32
    assert [int(w) for w in data[0, 0]] == [0x73625140, 0xFBEAD9C8, 0x73625140, 0xFBEAD9C8]


def test_int4_mask_shift_yields_dot_operands():
    rng = np.random.default_rng(1)
    q = rng.integers(-8, 8, size=(3, 64)).astype(np.int8)
    data = L.pack_int4_weight(q).arrays["data"]
    u = q.astype(np.int64) + 8
    for n in range(3):
        for b in range(2):
            for c in range(4):
                k0 = 32 * b + 8 * c
                w = int(data[n, b, c])
                lo, hi = w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F
                assert [(lo >> 8 * j) & 0xFF for j in range(4)] == u[n, k0:k0 + 4].tolist()
                assert [(hi >> 8 * j) & 0xFF for j in range(4)] == u[n, k0 + 4:k0 + 8].tolist()


def test_int4_padding_nibbles_are_8():
    data = L.pack_int4_weight(np.array([[-8]], np.int8)).arrays["data"]
    assert data.shape == (1, 1, 4)
    assert [int(w) for w in data[0, 0]] == [0x88888880, 0x88888888, 0x88888888, 0x88888888]
    data = L.pack_int4_weight(np.full((2, 33), 7, np.int8)).arrays["data"]
    assert data.shape == (2, 2, 4)
    assert int(data[1, 1, 0]) == 0x8888888F and (data[:, 1, 1:] == 0x88888888).all()


def test_int4_channel_rows_are_contiguous():
    q = np.zeros((2, 64), np.int8)
    q[1, 40] = 1  # channel 1, block 1, component 1, byte 0 low nibble
    flat = L.pack_int4_weight(q).arrays["data"].reshape(-1)
    assert np.flatnonzero(flat != 0x88888888).tolist() == [8 + 4 + 1]


@given(int8_matrices(-8, 7, max_cols=200))
def test_int4_round_trip_and_reference(q):
    p = L.pack_int4_weight(q)
    assert p.format == "int4_uvec4" and p.shape == q.shape
    np.testing.assert_array_equal(p.arrays["data"], ref_int4(q))
    y = L.unpack_int4_weight(p)
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, q)


@pytest.mark.parametrize("bad", [8, -9, 127, -128])
def test_int4_rejects_out_of_range(bad):
    q = np.zeros((2, 16), np.int8)
    q[1, 3] = bad
    with pytest.raises(ValueError, match=rf"\[-8, 7\].*q\[1, 3\] = {bad}"):
        L.pack_int4_weight(q)


# ---------------------------------------------------------------- validation


PACKERS = [L.pack_int8_4h4w, L.pack_int8_4w, L.pack_int8_weight, L.pack_int4_weight]


@pytest.mark.parametrize("pack", PACKERS)
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.float32, np.bool_])
def test_packers_reject_wrong_dtype(pack, dtype):
    with pytest.raises(TypeError, match="int8"):
        pack(np.zeros((4, 8), dtype))


@pytest.mark.parametrize("pack", PACKERS)
@pytest.mark.parametrize("shape", [(8,), (2, 4, 8), ()])
def test_packers_reject_wrong_ndim(pack, shape):
    with pytest.raises(ValueError, match="2-D"):
        pack(np.zeros(shape, np.int8))


@pytest.mark.parametrize("pack", PACKERS)
def test_packers_reject_empty_and_non_arrays(pack):
    with pytest.raises(ValueError, match="empty"):
        pack(np.zeros((0, 8), np.int8))
    with pytest.raises(TypeError, match="ndarray"):
        pack([[1, 2, 3, 4]])


# ---------------------------------------------------------------- group params


@st.composite
def group_param_cases(draw):
    gs = draw(st.sampled_from([8, 16, 24, 32, 40, 64]))
    n_groups = draw(st.integers(1, max(1, 200 // gs)))
    n = draw(dims)
    pos = st.floats(2.0**-20, 1e3, width=32)
    scales = draw(hnp.arrays(np.float32, (n, n_groups), elements=pos))
    zeros = draw(
        st.none() | hnp.arrays(np.float32, (n, n_groups), elements=st.floats(-1e3, 1e3, width=32))
    )
    return scales, zeros, gs, gs * n_groups


@given(group_param_cases())
def test_group_params_round_trip(case):
    scales, zeros, gs, k = case
    p = L.pack_group_params(scales, zeros, gs, k)
    n, n_groups = scales.shape
    assert p.format == "group_params_ng" and p.shape == (n, k)
    assert dict(p.params) == {"group_size": gs, "n_groups": n_groups, "has_zeros": int(zeros is not None)}
    assert set(p.arrays) == ({"scales"} if zeros is None else {"scales", "zeros"})
    s, z = L.unpack_group_params(p)
    np.testing.assert_array_equal(s, scales)
    if zeros is None:
        assert z is None
    else:
        np.testing.assert_array_equal(z, zeros)


@given(group_param_cases())
def test_group_params_gn_repack_equals_transpose(case):
    scales_ng, zeros_ng, gs, k = case
    zeros_gn = None if zeros_ng is None else zeros_ng.T.copy()
    gn = L.pack_group_params_gn(scales_ng.T.copy(), zeros_gn, gs, k)
    assert gn.format == "group_params_gn" and gn.arrays["scales"].shape == scales_ng.T.shape
    ng = L.repack_group_params_ng(gn)
    direct = L.pack_group_params(scales_ng, zeros_ng, gs, k)
    assert ng.shape == direct.shape and dict(ng.params) == dict(direct.params)
    for name in direct.arrays:
        np.testing.assert_array_equal(ng.arrays[name], direct.arrays[name])


def test_group_params_stored_row_major_by_channel():
    scales = np.array([[1, 2, 3], [4, 5, 6]], np.float64)
    p = L.pack_group_params(scales, None, 8, 24)
    assert p.arrays["scales"].dtype == np.float32
    assert p.arrays["scales"].reshape(-1).tolist() == [1, 2, 3, 4, 5, 6]


def test_transposed_params_refused_even_when_shapes_match():
    """N == n_groups: shapes cannot tell [N, G] from [G, N]; the format name can."""
    n = n_groups = 4
    gs = 16
    scales_gn = np.arange(1, 17, dtype=np.float32).reshape(n_groups, n)
    zeros_gn = -np.arange(16, dtype=np.float32).reshape(n_groups, n)
    gn = L.pack_group_params_gn(scales_gn, zeros_gn, gs, gs * n_groups)
    ng_shape = L.pack_group_params(np.ones((n, n_groups)), None, gs, gs * n_groups).arrays["scales"].shape
    assert gn.arrays["scales"].shape == ng_shape

    with pytest.raises(LayoutError) as e:
        L.unpack_group_params(gn)
    msg = str(e.value)
    assert "group_params_gn" in msg and "group_params_ng" in msg
    assert "vkq.layouts.repack_group_params_ng" in msg

    ng = L.repack_group_params_ng(gn)
    assert ng.expect("group_params_ng") is ng
    s, z = L.unpack_group_params(ng)
    np.testing.assert_array_equal(s, scales_gn.T)
    np.testing.assert_array_equal(z, zeros_gn.T)


@pytest.mark.parametrize(
    "gs, k, match",
    [
        (0, 32, "positive multiple of 8"),
        (-8, 32, "positive multiple of 8"),
        (12, 48, "positive multiple of 8"),
        (4, 32, "positive multiple of 8"),
        (16, 40, "must divide K"),
        (64, 32, "must divide K"),
        (8, 0, "k must be positive"),
    ],
)
def test_group_params_reject_bad_group_size(gs, k, match):
    with pytest.raises(ValueError, match=match):
        L.pack_group_params(np.ones((2, 1)), None, gs, k)


@pytest.mark.parametrize("gs, k", [(8.0, 32), (8, 32.0), (True, 32), ("8", 32)])
def test_group_params_reject_non_int_sizes(gs, k):
    with pytest.raises(TypeError, match="must be an int"):
        L.pack_group_params(np.ones((2, 4)), None, gs, k)


def test_group_params_accept_numpy_int_sizes():
    p = L.pack_group_params(np.ones((2, 4)), None, np.int64(8), np.int32(32))
    assert p.params["group_size"] == 8 and p.shape == (2, 32)


def test_group_params_reject_wrong_n_groups():
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        L.pack_group_params(np.ones((2, 3)), None, 8, 32)
    with pytest.raises(ValueError, match=r"zeros must have shape \(2, 4\)"):
        L.pack_group_params(np.ones((2, 4)), np.zeros((4, 2)), 8, 32)
    with pytest.raises(ValueError, match=r"scales must have shape \(4, 5\)"):
        L.pack_group_params_gn(np.ones((3, 5)), None, 8, 32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e40, -1e40])
def test_group_params_reject_non_finite_scales(bad):
    scales = np.ones((3, 2))
    scales[1, 1] = bad
    with pytest.raises(ValueError, match=r"scales must be finite in float32.*scales\[1, 1\]"):
        L.pack_group_params(scales, None, 8, 16)


def test_group_params_accept_zero_negative_and_underflowing_scales():
    # Checkpoints carry scale-0 groups (all-zero blocks) and negative scales (ggml Q4_0);
    # a float64 scale below float32's range becomes 0, which is a valid scale too.
    scales = np.array([[0.0, -1.5], [-0.0, 1e-50]])
    s, _ = L.unpack_group_params(L.pack_group_params(scales, None, 8, 16))
    assert s.tolist() == [[0.0, -1.5], [0.0, 0.0]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1e40])
def test_group_params_reject_non_finite_zeros(bad):
    zeros = np.zeros((3, 2))
    zeros[2, 0] = bad
    with pytest.raises(ValueError, match=r"zeros must be finite.*zeros\[2, 0\]"):
        L.pack_group_params(np.ones((3, 2)), zeros, 8, 16)


def test_group_params_accept_negative_and_zero_zeros():
    zeros = np.array([[-2.5, 0.0]], np.float64)
    _, z = L.unpack_group_params(L.pack_group_params(np.ones((1, 2)), zeros, 8, 16))
    assert z.dtype == np.float32 and z.tolist() == [[-2.5, 0.0]]


@pytest.mark.parametrize(
    "scales, exc",
    [
        (np.ones((2, 4), np.int32), TypeError),
        (np.ones((2, 4), np.float16), None),
        ([[1.0] * 4] * 2, TypeError),
        (np.ones(8), ValueError),
        (np.ones((1, 2, 4)), ValueError),
    ],
)
def test_group_params_scale_types(scales, exc):
    if exc is None:
        assert L.pack_group_params(scales, None, 8, 32).arrays["scales"].dtype == np.float32
    else:
        with pytest.raises(exc):
            L.pack_group_params(scales, None, 8, 32)


def test_repack_rejects_inconsistent_params():
    gn = L.pack_group_params_gn(np.ones((4, 2)), None, 8, 32)
    broken = PackedTensor(gn.format, gn.version, gn.shape, gn.arrays, {**gn.params, "group_size": 16})
    with pytest.raises(LayoutError, match="group_size=16"):
        L.repack_group_params_ng(broken)


# ---------------------------------------------------------------- edge shapes


@pytest.mark.parametrize("m, k", [(1, 1), (3, 5), (67, 69), (70, 1), (1, 70), (64, 64)])
def test_int8_layouts_fixed_edge_shapes(m, k):
    x = np.random.default_rng(m * 100 + k).integers(-127, 128, size=(m, k)).astype(np.int8)
    np.testing.assert_array_equal(L.pack_int8_4h4w(x).arrays["data"], ref_tile_4x4(x))
    np.testing.assert_array_equal(L.unpack_int8_4h4w(L.pack_int8_4h4w(x)), x)
    np.testing.assert_array_equal(L.unpack_int8_4w(L.pack_int8_4w(x)), x)
    np.testing.assert_array_equal(L.unpack_int8_weight(L.pack_int8_weight(x)), x)


@pytest.mark.parametrize("n, k", [(1, 1), (5, 31), (7, 33), (70, 199), (3, 200), (2, 256)])
def test_int4_fixed_edge_shapes(n, k):
    q = np.random.default_rng(n * 1000 + k).integers(-8, 8, size=(n, k)).astype(np.int8)
    p = L.pack_int4_weight(q)
    np.testing.assert_array_equal(p.arrays["data"], ref_int4(q))
    np.testing.assert_array_equal(L.unpack_int4_weight(p), q)


def test_int8_weight_rejects_k_whose_wsum_could_overflow():
    k = (2**31 - 1) // 128 + 1  # |wsum| <= 128 * K with -128 weights
    with pytest.raises(ValueError, match="fit int32"):
        L.pack_int8_weight(np.zeros((1, k), np.int8))


# ------------------------------------------------------------------ fp16 group parameters
def test_fits_half_means_exact_normal_or_zero():
    assert L.fits_half(np.array([1.0, -0.5, 0.0, -0.0, 65504.0, -65504.0, 2.0 ** -14,
                                 -(2.0 ** -14), 1.0 + 2.0 ** -10], np.float32))
    for bad in (1.0 + 2.0 ** -11,   # needs 12 significant bits
                2.0 ** -15,         # exact, but an fp16 subnormal (GPUs may flush those)
                65520.0,            # rounds to inf in fp16
                -65520.0, -(2.0 ** -15),
                np.inf, np.nan):
        assert not L.fits_half(np.array([1.0, bad], np.float32)), bad


def test_half_words_order_and_padding():
    a = np.array([[1.0, -2.0, 0.5]], np.float32)  # fp16 0x3C00, 0xC000, 0x3800
    words = L.half_words(a)
    assert words.dtype == np.uint32
    assert [hex(int(v)) for v in words] == ["0xc0003c00", "0x3800"]  # odd count: zero half
    back = words.view("<f2")[: a.size].astype(np.float32).reshape(a.shape)
    np.testing.assert_array_equal(back, a)
    with pytest.raises(ValueError, match="float32"):
        L.half_words(np.array([0.1], np.float32))
