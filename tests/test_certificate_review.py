"""Regression tests for the second review of issue 12 (reports/review12.md): certified
brackets that excluded the truth for float32 tiles (D1), a failing update() that left a
half-recorded tile behind (D2), an overflowing per-layer residual (D3), flush-to-zero
results (D4), and unclear errors. Truths are exact (Fractions, tests/exact.py)."""

from __future__ import annotations

import math
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from lplr_fast import StreamingBounds, eig_bounds, ntk_distance
from lplr_fast.spectrum import WidenedInputWarning

from .exact import ExactSpectrum, frobenius_sq
from .faults import Injected, fail_at_call, stream_results

F64 = torch.float64
FLOAT_MAX = sys.float_info.max


def contains(lo: float, hi: float, truth: Fraction) -> bool:
    return (
        lo <= hi
        and (lo == -math.inf or Fraction(lo) <= truth)
        and (hi == math.inf or truth <= Fraction(hi))
    )


# -- D1: float32 diagonal blocks ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_tile_asymmetry_is_bounded_in_float64(dtype):
    k = 1 + 2.0**-12
    m = torch.tensor([[1.0, k], [-k, 1.0]], dtype=dtype)  # sym(M) = I exactly: λ = 1, 1
    stream = StreamingBounds(2, upper=True, psd=True)
    stream.update(slice(0, 2), slice(0, 2), m)
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, Fraction(1)), b
    assert contains(b.lambda_min_lower, b.lambda_min_upper, Fraction(1)), b
    skew_sq = 8 * Fraction(k) ** 2  # ‖M − Mᵀ‖_F² exactly
    assert Fraction(stream.skew_frobenius_upper()) ** 2 >= skew_sq
    assert Fraction(stream.sym_frobenius_lower()) ** 2 <= 2  # ‖I₂‖_F²


@pytest.mark.filterwarnings("ignore::lplr_fast.spectrum.WidenedInputWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_float32_tile_asymmetry_that_underflows(dtype):
    c, k = 2.0**-52, 2.0**-76
    m = torch.tensor([[c, k], [-k, c]], dtype=dtype)  # sym(M) = c·I: λ_max = 2⁻⁵² exactly
    stream = StreamingBounds(1, upper=True, psd=True)
    stream.update(slice(0, 1), slice(0, 1), m.reshape(1, 1, 2, 2))
    b = stream.bounds()
    exact = ExactSpectrum(m.double())
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), b
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), b


# -- D2: a tile is recorded whole or not at all ----------------------------------------------
def test_tile_whose_float32_asymmetry_overflows_is_certified():
    m = torch.tensor([[1.0, 1e20], [0.0, 1.0]])  # float32; eigenvalues of sym: 1 ∓ 5e19
    stream = StreamingBounds(2, psd=False)
    stream.update(slice(0, 2), slice(0, 2), m)
    b = stream.bounds()
    exact = ExactSpectrum(m.double())
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), b
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), b


def _feed_with_failure(upper: bool, per_layer: bool, failing_tile: int, call: int):
    """Feed a fixed kernel; the update of tile ``failing_tile`` fails at ``call`` (then the
    same tile is fed again). Returns (stream, whether the failure happened)."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 6, generator=g, dtype=F64) * 2.0**300  # scaled tiles: every step runs
    a = a @ a.T
    a[0, 1] += 2.0**290  # an asymmetric diagonal block
    parts = (a * 0.75, a * 0.25)
    tiles = [((0, 2), (0, 2)), ((0, 2), (2, 6)), ((2, 6), (2, 6))]
    if not upper:
        tiles.append(((2, 6), (0, 2)))
    stream = StreamingBounds(6, upper=upper, psd=True, per_layer=per_layer)
    failed = False
    feeds = []
    for rows, cols in tiles:
        feeds.append((rows, cols, a, None))
        if per_layer:
            feeds += [(rows, cols, p, f"l{i}") for i, p in enumerate(parts)]
    for i, (rows, cols, m, layer) in enumerate(feeds):
        r, c = slice(*rows), slice(*cols)
        if i == failing_tile:
            with fail_at_call(call):
                try:
                    stream.update(r, c, m[r, c], layer=layer)
                    continue
                except Injected:
                    failed = True
        stream.update(r, c, m[r, c], layer=layer)
    return stream, failed


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("upper", [True, False])
def test_failed_update_leaves_no_trace(upper, per_layer):
    clean, _ = _feed_with_failure(upper, per_layer, -1, 0)
    expected = stream_results(clean)
    feeds = (3 if upper else 4) * (3 if per_layer else 1)
    for failing_tile in range(feeds):
        call, failed = 0, True
        while failed:
            stream, failed = _feed_with_failure(upper, per_layer, failing_tile, call)
            assert stream_results(stream) == expected, (failing_tile, call)
            call += 1
        assert call > 3  # the failures hit several steps of every update


# -- D3: per-layer residual of huge cancelling parts -----------------------------------------
@pytest.mark.parametrize("e", [512, 600, 1000])
def test_per_layer_residual_of_huge_cancelling_parts(e):
    a = 2.0**e
    p1 = torch.tensor([[a, a], [a, a]], dtype=F64)  # PSD (rank 1)
    p2 = torch.tensor([[a, -a], [-a, a]], dtype=F64)  # PSD (rank 1)
    total = p1 + p2  # exactly 2a·I
    stream = StreamingBounds(2, per_layer=True)
    for r, c in [((0, 1), (0, 1)), ((1, 2), (1, 2)), ((0, 1), (1, 2))]:
        rs, cs = slice(*r), slice(*c)
        stream.update(rs, cs, total[rs, cs])
        stream.update(rs, cs, p1[rs, cs], layer="l1")
        stream.update(rs, cs, p2[rs, cs], layer="l2")
    b = stream.bounds()
    truth = 2 * Fraction(a)
    assert contains(b.lambda_min_lower, b.lambda_min_upper, truth), b
    assert contains(b.lambda_max_lower, b.lambda_max_upper, truth), b
    assert stream.layer_additivity_lower() <= truth


# -- D4: flush-to-zero at result time --------------------------------------------------------
def test_flush_to_zero_is_refused_by_every_result():
    tiny = torch.tensor([[3 * 2.0**-1074, 0.0], [0.0, 2 * 2.0**-1074]], dtype=F64)
    stream = StreamingBounds(2, psd=True, per_layer=True)
    stream.update(slice(0, 2), slice(0, 2), tiny)
    stream.update(slice(0, 2), slice(0, 2), tiny, layer="only")
    results = {
        "bounds": stream.bounds,
        "gershgorin": stream.gershgorin,
        "trace_bounds": stream.trace_bounds,
        "frobenius_bounds": stream.frobenius_bounds,
        "sym_frobenius_lower": stream.sym_frobenius_lower,
        "skew_frobenius_upper": stream.skew_frobenius_upper,
        "layer_additivity_lower": stream.layer_additivity_lower,
        "trace": lambda: stream.trace,
        "frobenius": lambda: stream.frobenius,
    }
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for name, get in results.items():
            with pytest.raises(RuntimeError, match="gradual underflow"):
                print(name, get())
    finally:
        torch.set_flush_denormal(False)
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, 3 * Fraction(2.0**-1074))


# -- the distributed merge path (record / export / merged) gets the same fixes -----------------
def _merged(feeds, n: int, ranks: int = 2, **kwargs) -> StreamingBounds:
    """Feeds (rows, cols, tile, layer) dealt round-robin (by tile) to recorded streams, merged."""
    parts = [StreamingBounds(n, record=True, **kwargs) for _ in range(ranks)]
    tile = -1
    for rows, cols, m, layer in feeds:
        tile += layer is None
        parts[tile % ranks].update(slice(*rows), slice(*cols), m, layer=layer)
    return StreamingBounds.merged([p.export() for p in parts])


def test_merged_float32_asymmetry_is_bounded_in_float64():
    k = 1 + 2.0**-12
    m = torch.tensor([[1.0, k], [-k, 1.0]], dtype=torch.float32)
    merged = _merged([((0, 2), (0, 2), m, None)], n=2, psd=True)
    b = merged.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, Fraction(1)), b
    assert Fraction(merged.skew_frobenius_upper()) ** 2 >= 8 * Fraction(k) ** 2


def test_merged_streams_carry_no_trace_of_a_rejected_tile():
    m = torch.tensor([[1.0, 1e20], [0.0, 1.0]])  # float32
    tried = StreamingBounds(2, psd=False, record=True)
    with pytest.raises(ValueError, match="NaN"):
        tried.update(slice(0, 2), slice(0, 2), torch.tensor([[1.0, math.nan], [0.0, 1.0]]))
    tried.update(slice(0, 2), slice(0, 2), m)
    assert len(tried.export().records) == 1
    b = StreamingBounds.merged([tried.export()]).bounds()
    exact = ExactSpectrum(m.double())
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), b
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), b


def test_merged_per_layer_residual_of_huge_cancelling_parts():
    a = 2.0**600
    p1 = torch.tensor([[a, a], [a, a]], dtype=F64)
    p2 = torch.tensor([[a, -a], [-a, a]], dtype=F64)
    total = p1 + p2
    feeds = []
    for r, c in [((0, 1), (0, 1)), ((0, 1), (1, 2)), ((1, 2), (1, 2))]:
        rs, cs = slice(*r), slice(*c)
        feeds += [(r, c, total[rs, cs], None), (r, c, p1[rs, cs], "l1"), (r, c, p2[rs, cs], "l2")]
    merged = _merged(feeds, ranks=3, n=2, per_layer=True)
    b = merged.bounds()
    assert contains(b.lambda_min_lower, b.lambda_min_upper, 2 * Fraction(a)), b
    assert merged.layer_additivity_lower() <= 2 * Fraction(a)


def test_merged_stream_refuses_flush_to_zero():
    tiny = torch.tensor([[3 * 2.0**-1074, 0.0], [0.0, 2 * 2.0**-1074]], dtype=F64)
    merged = _merged([((0, 2), (0, 2), tiny, None)], n=2, psd=False)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        with pytest.raises(RuntimeError, match="gradual underflow"):
            merged.bounds()
    finally:
        torch.set_flush_denormal(False)
    b = merged.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, 3 * Fraction(2.0**-1074))


# -- unclear errors and the doc item -------------------------------------------------------------
@pytest.mark.parametrize("method", ["dense", "cholesky", "auto", "lanczos"])
@pytest.mark.parametrize("c", [FLOAT_MAX, FLOAT_MAX * (1 - 1e-13), 2.0**1023])
@pytest.mark.parametrize("n", [1, 3])
def test_eigenvalue_at_the_top_of_the_float_range_gets_a_bracket(n, c, method):
    b = eig_bounds(c * torch.eye(n, dtype=F64), method=method)
    assert b.lambda_min_lower <= c <= b.lambda_min_upper
    assert b.lambda_max_lower <= c <= b.lambda_max_upper
    assert b.lambda_max_lower > 0.99 * c  # informative: [≈c, ≤ inf]
    if method != "lanczos":
        assert b.certified_min and b.certified_max
    got = ntk_distance(torch.zeros(n, n, dtype=F64), c * torch.eye(n, dtype=F64))
    assert got.certified and got.lower <= c <= got.upper


def test_eigenvalue_certainly_beyond_the_float_range_is_still_an_error():
    with pytest.raises(OverflowError, match=r"λ_max of K .*beyond the float64 range"):
        eig_bounds(torch.full((3, 3), FLOAT_MAX, dtype=F64))
    with pytest.raises(OverflowError, match=r"λ_min of K .*beyond the float64 range"):
        eig_bounds(torch.full((3, 3), -FLOAT_MAX, dtype=F64), which=("min",))


def test_numpy_arrays_with_negative_strides():
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    flipped = a[::-1, ::-1]  # [[3, 1], [1, 2]]
    b = eig_bounds(flipped)
    exact = ExactSpectrum(torch.tensor(flipped.copy()))
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    stream = StreamingBounds(2)
    stream.update(slice(0, 2), slice(0, 2), flipped)
    sb = stream.bounds()
    assert exact.max_in(sb.lambda_max_lower, sb.lambda_max_upper)
    got = ntk_distance(flipped, a[::-1], "fro")
    f2 = frobenius_sq(torch.tensor(a[::-1] - flipped))
    assert Fraction(got.lower) ** 2 <= f2 <= Fraction(got.upper) ** 2


def test_big_endian_float64_is_accepted():
    a = np.array([[2.0, 1.0], [1.0, 3.0]], dtype=">f8")
    b = eig_bounds(a)
    assert ExactSpectrum(torch.tensor(a.astype(np.float64))).min_in(
        b.lambda_min_lower, b.lambda_min_upper
    )
    stream = StreamingBounds(2)
    stream.update(slice(0, 2), slice(0, 2), a.astype(">f4"))
    assert stream.bounds().certified_max
    with pytest.raises(TypeError, match=r"float128|longdouble|convert it to float64"):
        eig_bounds(a.astype(np.longdouble))


def test_sparse_tensors_are_refused_clearly():
    sparse = torch.eye(2, dtype=F64).to_sparse()
    with pytest.raises(TypeError, match=r"K is a sparse tensor.*to_dense"):
        eig_bounds(sparse)
    with pytest.raises(TypeError, match=r"tile is a sparse tensor.*to_dense"):
        StreamingBounds(2).update(slice(0, 2), slice(0, 2), sparse)
    with pytest.raises(TypeError, match=r"K0 is a sparse tensor.*to_dense"):
        ntk_distance(sparse, torch.eye(2, dtype=F64))


def test_scipy_linear_operators():
    scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
    a = np.diag([1.0, 2.0, 3.0, 4.0])
    a[0, 1] = a[1, 0] = 0.5
    op = scipy_linalg.aslinearoperator(a)
    b = eig_bounds(op, rtol=1e-12)
    ev = np.linalg.eigvalsh(a)
    assert not b.certified_max and math.isclose(b.lambda_max_lower, ev[-1], rel_tol=1e-9)
    assert math.isclose(b.lambda_min_upper, ev[0], rel_tol=1e-9)
    zero = scipy_linalg.aslinearoperator(np.zeros((4, 4), dtype=np.float32))
    for ord_ in (2, "fro"):
        got = ntk_distance(zero, op, ord_, rtol=1e-12)
        truth = ev[-1] if ord_ == 2 else np.linalg.norm(a)
        assert not got.certified and math.isclose(got.value, truth, rel_tol=1e-6), (ord_, got)
    with pytest.raises(TypeError, match="complex"):
        eig_bounds(scipy_linalg.aslinearoperator(a.astype(np.complex128)))


def test_python_lists_are_refused_clearly_by_ntk_distance():
    with pytest.raises(TypeError, match=r"K0 is a list of numbers.*torch\.tensor"):
        ntk_distance([[1.0]], [[2.0]])
    with pytest.raises(TypeError, match=r"K1 is a list of numbers"):
        ntk_distance(torch.eye(1), [[2.0]])
    with pytest.raises(TypeError, match=r"K0 must be"):
        ntk_distance(1.0, 2.0)
    pairs = [((slice(0, 1), slice(0, 1)), torch.ones(1, 1, dtype=F64))]
    got = ntk_distance(pairs, [((slice(0, 1), slice(0, 1)), 3 * torch.ones(1, 1))], n=1)
    assert got.certified and got.lower <= 2 <= got.upper  # lists of tile pairs are streams
    with pytest.raises(TypeError, match=r"K1 tile stream: item 0 is not a \(\(rows, cols\)"):
        ntk_distance(iter(pairs), iter([torch.ones(1, 1)]), n=1)


@pytest.mark.parametrize("seed", [2**70, -1, 1.5, True])
def test_bad_seed_is_a_clear_error(seed):
    with pytest.raises((TypeError, ValueError), match="seed must be an integer"):
        eig_bounds(torch.eye(2, dtype=F64), seed=seed)
    assert eig_bounds(torch.eye(2, dtype=F64), seed=2**64 - 2).certified_min


def test_asymmetric_difference_is_named_clearly():
    with pytest.raises(ValueError, match=r"‖\(K1 − K0\) − \(K1 − K0\)ᵀ‖_F"):
        ntk_distance(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.zeros(2, 2), 2)


@pytest.mark.parametrize("rows", [slice(0, 1.5), slice(0.0, 2.0), slice(0, 2, 1.0)])
def test_non_integer_slices_are_refused(rows):
    with pytest.raises(TypeError, match="integer"):
        StreamingBounds(2).update(rows, slice(0, 2), torch.eye(2))
    stream = StreamingBounds(2)
    stream.update(slice(np.int64(0), np.int64(2)), slice(0, 2), torch.eye(2))  # numpy ints
    assert stream.bounds().certified_min


def test_incomplete_layer_does_not_block_the_kernel_bounds():
    a = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=F64)
    stream = StreamingBounds(2, per_layer=True)
    stream.update(slice(0, 1), slice(0, 1), a[:1, :1])
    stream.update(slice(0, 1), slice(0, 1), a[:1, :1], layer="l")
    stream.update(slice(0, 1), slice(1, 2), a[:1, 1:])
    stream.update(slice(1, 2), slice(1, 2), a[1:, 1:])  # layer "l" is missing two tiles
    b = stream.bounds()
    assert contains(b.lambda_min_lower, b.lambda_min_upper, Fraction(1)), b
    with pytest.raises(ValueError, match=r"layer 'l'.*covered 1 of 3"):
        stream.layer_additivity_lower()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_widening_is_announced(dtype):
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=dtype)
    with pytest.warns(WidenedInputWarning, match=rf"K: {dtype} entries .* float64") as caught:
        eig_bounds(a)
    assert {w.filename for w in caught} == {__file__}  # points at the caller's line
    with pytest.warns(WidenedInputWarning, match="tile"):
        StreamingBounds(2).update(slice(0, 2), slice(0, 2), a)
    with pytest.warns(WidenedInputWarning, match="K0"):
        ntk_distance(a, a.double())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eig_bounds(a.float())  # float32 and float64 are used as given: no warning
