"""Regression tests for issue 12: certified brackets that excluded the truth, misfed tiles,
unscaled norms, and inputs that got unclear errors. Truths are exact (Fractions)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lplr_fast import StreamingBounds, eig_bounds, ntk_distance
from lplr_fast.spectrum import WidenedInputWarning
from lplr_fast.spectrum.rounding import scale_tensor

from .exact import ExactSpectrum, fro_in

F64 = torch.float64


def feed(stream: StreamingBounds, a: torch.Tensor, block: int, upper: bool = True) -> None:
    n = a.shape[0]
    for r in range(0, n, block):
        for c in range(r if upper else 0, n, block):
            rows, cols = slice(r, min(n, r + block)), slice(c, min(n, c + block))
            stream.update(rows, cols, a[rows, cols])


def contains(lo: float, hi: float, truth: Fraction) -> bool:
    return (
        lo <= hi
        and (lo == -math.inf or Fraction(lo) <= truth)
        and (hi == math.inf or truth <= Fraction(hi))
    )


# -- StreamingBounds -----------------------------------------------------------------------
@pytest.mark.parametrize("psd", [True, False])
@pytest.mark.parametrize("block", [1, 4, 23])
def test_streaming_scaled_identity(psd, block):
    c = 3.115400831755733e50
    stream = StreamingBounds(23, psd=psd)
    feed(stream, c * torch.eye(23, dtype=F64), block)
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, Fraction(c))
    assert contains(b.lambda_min_lower, b.lambda_min_upper, Fraction(c))


@pytest.mark.parametrize(
    "c, n, block",  # λ_max lower bounds that exceeded λ_max before (found by a search)
    [
        (1.2752108160448306e26, 39, 23),
        (1.1694246060974675e72, 38, 14),
        (1.1150124003280546e79, 24, 1),
    ],
)
def test_streaming_scaled_identity_found_cases(c, n, block):
    stream = StreamingBounds(n)
    feed(stream, c * torch.eye(n, dtype=F64), block)
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, Fraction(c))


@pytest.mark.parametrize("psd", [True, False])
@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("n", [2, 5, 23])
@pytest.mark.parametrize("c", [1e12, 3.3e13, 7.123456789e15, 1e155, 2e-310, 4.9e-324, 1e300])
def test_streaming_constant_matrices(c, n, upper, psd):
    stream = StreamingBounds(n, psd=psd, upper=upper)
    feed(stream, torch.full((n, n), c, dtype=F64), 3, upper)
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, n * Fraction(c)), b
    assert contains(b.lambda_min_lower, b.lambda_min_upper, Fraction(0)), b
    assert b.lambda_max_lower > 0 and b.lambda_min_lower <= 0 <= b.lambda_min_upper


def test_streaming_beyond_float_range_stays_valid():
    c = 1.7e308
    stream = StreamingBounds(3, psd=False)
    feed(stream, torch.full((3, 3), c, dtype=F64), 2)
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, 3 * Fraction(c))
    assert b.lambda_max_upper == math.inf and b.lambda_max_lower >= c


def test_duplicated_tile_cannot_stand_in_for_a_missing_one():
    a = torch.tensor([[1.0, 10.0], [10.0, 1.0]], dtype=F64)
    stream = StreamingBounds(2)
    stream.update(slice(0, 1), slice(0, 1), a[:1, :1])
    with pytest.raises(ValueError, match="overlaps"):
        stream.update(slice(0, 1), slice(0, 1), a[:1, :1])
    stream.update(slice(1, 2), slice(1, 2), a[1:, 1:])
    with pytest.raises(ValueError, match="covered 2 of 3"):
        stream.bounds()
    stream.update(slice(0, 1), slice(1, 2), a[:1, 1:])  # the rejected tile left no trace
    b = StreamingBounds(2, psd=False)
    feed(b, a, 1)
    got = b.bounds()
    assert got.lambda_min_lower <= -9 <= got.lambda_min_upper
    assert got.lambda_max_lower <= 11 <= got.lambda_max_upper


@pytest.mark.parametrize("upper", [True, False])
def test_overlapping_and_misplaced_tiles(upper):
    a = torch.ones(6, 6, dtype=F64)
    stream = StreamingBounds(6, upper=upper)
    stream.update(slice(0, 3), slice(0, 3), a[:3, :3])
    with pytest.raises(ValueError, match="overlaps"):
        stream.update(slice(2, 4), slice(2, 4), a[2:4, 2:4])
    with pytest.raises(ValueError, match="overlaps"):
        stream.update(slice(0, 6), slice(0, 6), a)
    with pytest.raises(ValueError, match="step 1"):
        stream.update(slice(3, 6, 2), slice(3, 6), a[3:6:2, 3:6])
    if upper:
        with pytest.raises(ValueError, match="diagonal block"):
            stream.update(slice(3, 5), slice(4, 6), a[3:5, 4:6])  # crosses the diagonal
    stream.update(slice(3, 6), slice(3, 6), a[3:, 3:])
    stream.update(slice(0, 3), slice(3, 6), a[:3, 3:])
    if not upper:
        with pytest.raises(ValueError, match="covered"):
            stream.bounds()
        stream.update(slice(3, 6), slice(0, 3), a[3:, :3])
    b = stream.bounds()
    assert contains(b.lambda_max_lower, b.lambda_max_upper, Fraction(6))


def test_rejected_nonfinite_tile_leaves_no_trace():
    a = torch.eye(4, dtype=F64)
    stream = StreamingBounds(4)
    bad = a[:2, :2].clone()
    bad[0, 1] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        stream.update(slice(0, 2), slice(0, 2), bad)
    feed(stream, a, 2)
    b = stream.bounds()
    assert b.lambda_min_lower <= 1 <= b.lambda_min_upper


def test_layer_additivity_accounts_for_the_rounded_total():
    rng = torch.Generator().manual_seed(3)
    n = 5
    parts = []
    for scale in (1.0, 1e-8, 3.3e5):
        m = torch.randn(n, n, generator=rng, dtype=F64) * scale
        m = m + m.T
        m.diagonal().copy_(m.abs().sum(1) * 1.5)  # diagonally dominant: exactly PSD
        parts.append(m)
    total = parts[0] + parts[1] + parts[2]  # rounded
    stream = StreamingBounds(n, per_layer=True)
    for r, c in [
        (slice(0, 2), slice(0, 2)),
        (slice(0, 2), slice(2, 5)),
        (slice(2, 5), slice(2, 5)),
    ]:
        stream.update(r, c, total[r, c])
        for i, p in enumerate(parts):
            stream.update(r, c, p[r, c], layer=str(i))
    exact = ExactSpectrum(total)
    add = stream.layer_additivity_lower()
    assert exact.counts(add)[0] == 0  # λ_min(total) ≥ add
    b = stream.bounds()
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    late = StreamingBounds(n, per_layer=True)
    late.update(slice(0, 5), slice(0, 5), total)
    late.update(slice(0, 5), slice(0, 5), parts[0], layer="0")
    late.update(slice(0, 5), slice(0, 5), parts[1], layer="1")
    late.update(slice(0, 5), slice(0, 5), parts[1], layer="1x")
    assert late.layer_additivity_lower() <= b.lambda_min_upper
    out_of_order = StreamingBounds(n, per_layer=True)
    out_of_order.update(slice(0, 5), slice(0, 5), parts[0], layer="0")
    out_of_order.update(slice(0, 5), slice(0, 5), total)
    with pytest.raises(ValueError, match="right after"):
        out_of_order.layer_additivity_lower()


# -- ntk_distance --------------------------------------------------------------------------
def _tile_stream(k: torch.Tensor, block: int):
    n = k.shape[0]
    for r in range(0, n, block):
        for c in range(r, n, block):
            rows, cols = slice(r, min(n, r + block)), slice(c, min(n, c + block))
            yield (rows, cols), k[rows, cols]


@pytest.mark.parametrize("c", [1e-170, 1e155, 4.9e-324, 1e300, 1.0])
def test_ntk_distance_at_extreme_scales(c):
    k0 = torch.zeros(3, 3, dtype=F64)
    k1 = torch.full((3, 3), c, dtype=F64)
    truth = 3 * Fraction(c)  # rank one: ‖D‖₂ = ‖D‖_F = 3c
    for ord_ in ("fro", 2):
        got = ntk_distance(k0, k1, ord_)
        assert got.certified and contains(got.lower, got.upper, truth), (ord_, got)
        tiles = ntk_distance(_tile_stream(k0, 2), _tile_stream(k1, 2), ord_, n=3)
        assert tiles.certified and contains(tiles.lower, tiles.upper, truth), (ord_, tiles)
    assert fro_in(k1, *_pair(ntk_distance(k0, k1, "fro")))


def _pair(nb):
    return nb.lower, nb.upper


def test_ntk_distance_difference_beyond_range_is_an_error():
    k1 = torch.full((2, 2), 1.7e308, dtype=F64)
    with pytest.raises(OverflowError, match="exceeds the float64 range"):
        ntk_distance(-k1, k1)
    with pytest.raises(OverflowError, match="exceeds the float64 range"):
        ntk_distance(_tile_stream(-k1, 1), _tile_stream(k1, 1), "fro", n=2)


def test_ntk_distance_accounts_for_the_rounding_of_the_difference():
    k0 = torch.tensor([[1.0, 2.0**-60], [2.0**-60, 1.0]], dtype=F64)
    k1 = torch.tensor([[1.0 + 2.0**-52, 0.0], [0.0, 1.0]], dtype=F64) * 3.0
    diff = [[Fraction(float(k1[i, j])) - Fraction(float(k0[i, j])) for j in range(2)]
            for i in range(2)]  # fmt: skip
    f2 = sum(x * x for row in diff for x in row)
    got = ntk_distance(k0, k1, "fro")
    assert Fraction(got.lower) ** 2 <= f2 <= Fraction(got.upper) ** 2


def test_ntk_distance_bad_inputs():
    k = torch.eye(3, dtype=F64)
    bad = k.clone()
    bad[1, 1] = math.nan
    with pytest.raises(ValueError, match="K0 contains 1 NaN"):
        ntk_distance(bad, k)
    with pytest.raises(TypeError, match="K1 is a list of numbers"):
        ntk_distance(k, [[1.0]])
    with pytest.raises(TypeError, match="two of a kind"):
        ntk_distance(k, iter([((slice(0, 3), slice(0, 3)), k)]), n=3)
    with pytest.raises(ValueError, match="empty"):
        ntk_distance(torch.zeros(0, 0), torch.zeros(0, 0))
    with pytest.raises(ValueError, match="on meta"):
        ntk_distance(k, torch.eye(3, dtype=F64, device="meta"))
    got = ntk_distance(np.eye(3), 2 * np.eye(3, dtype=np.float32))
    assert got.certified and got.lower <= 1.0 <= got.upper
    with pytest.warns(WidenedInputWarning):
        half = ntk_distance(k.half(), 2 * k.to(torch.bfloat16), "fro")  # ‖I₃‖_F = √3
    assert Fraction(half.lower) ** 2 <= 3 <= Fraction(half.upper) ** 2


# -- eig_bounds ----------------------------------------------------------------------------
def test_overflowing_asymmetry_is_refused():
    a = torch.tensor([[1e307, 1.5e308], [-0.6e308, 1e307]], dtype=F64)
    with pytest.raises(ValueError, match="not symmetric"):
        eig_bounds(a)


WELL_CONDITIONED = torch.tensor(
    [[4.0, 1.0, 0.0, 0.5], [1.0, 3.0, 0.25, 0.0], [0.0, 0.25, 2.0, 0.125], [0.5, 0.0, 0.125, 5.0]],
    dtype=F64,
)


@pytest.mark.parametrize("k", [-1070, -1060, -1000, -600, 0, 600, 1000, 1018])
@pytest.mark.parametrize("method", ["dense", "cholesky", "lanczos", "auto"])
def test_well_conditioned_anywhere_in_the_float_range(k, method):
    a = scale_tensor(WELL_CONDITIONED, k)
    exact = ExactSpectrum(a)
    b = eig_bounds(a, method=method, rtol=1e-10)
    if method == "lanczos":
        assert not b.certified_min and not b.certified_max
        assert exact.counts(b.lambda_min_upper)[0] >= 1  # rigorous Rayleigh end
        assert exact.counts(b.lambda_max_lower)[2] + exact.counts(b.lambda_max_lower)[1] >= 1
        ev = torch.linalg.eigvalsh(WELL_CONDITIONED)
        if k > -1000:  # not silently wrong: the estimates are right to rtol
            assert math.isclose(math.ldexp(b.lambda_max_lower, -k), float(ev[-1]), rel_tol=1e-8)
            assert math.isclose(math.ldexp(b.lambda_min_upper, -k), float(ev[0]), rel_tol=1e-8)
        return
    assert b.certified_min and b.certified_max
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), b
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), b
    if k > -1000:
        ev = torch.linalg.eigvalsh(WELL_CONDITIONED)
        assert math.isclose(math.ldexp(b.lambda_min_lower, -k), float(ev[0]), rel_tol=1e-8)


@pytest.mark.parametrize("method", ["dense", "cholesky"])
def test_subnormal_indefinite_matrix(method):
    a = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64) * 2.0**-1073
    b = eig_bounds(a, method=method)
    exact = ExactSpectrum(a)  # eigenvalues −1, 1, 3 (× 2⁻¹⁰⁷³)
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper)
    assert b.lambda_min_upper < 0


def test_eigenvalue_beyond_float_range_is_an_overflow_error():
    a = torch.full((3, 3), 1.7e308, dtype=F64)
    with pytest.raises(OverflowError, match="λ_max of K"):
        eig_bounds(a)
    b = eig_bounds(a, which=("min",))  # λ_min = 0 is representable
    assert b.lambda_min_lower <= 0 <= b.lambda_min_upper


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_widened_exactly(dtype):
    a = WELL_CONDITIONED.to(dtype)
    with pytest.warns(WidenedInputWarning, match="widened to float64"):
        b = eig_bounds(a)
    exact = ExactSpectrum(a.double())
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper)


def test_numpy_and_bad_inputs():
    b = eig_bounds(WELL_CONDITIONED.numpy())
    assert ExactSpectrum(WELL_CONDITIONED).min_in(b.lambda_min_lower, b.lambda_min_upper)
    ro = WELL_CONDITIONED.numpy().copy()
    ro.setflags(write=False)
    assert eig_bounds(ro).certified_min
    with pytest.raises(TypeError, match=r"torch\.Tensor or a numpy\.ndarray"):
        eig_bounds([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(TypeError, match="floating-point"):
        eig_bounds(np.eye(3, dtype=np.int64))
    with pytest.raises(TypeError, match="complex"):
        eig_bounds(np.eye(3, dtype=np.complex128))
    with pytest.raises(ValueError, match="K is empty"):
        eig_bounds(np.zeros((0, 0)))
    with pytest.raises(ValueError, match="K contains 1 NaN or Inf"):
        eig_bounds(torch.tensor([[1.0, 0.0], [0.0, math.inf]]))


def test_streaming_input_kinds():
    with pytest.raises(ValueError, match="diagonal block"):
        StreamingBounds(3).update(slice(0, 1), slice(0, 3), np.array([[2.0, 0.5, 0.0]]))
    stream = StreamingBounds(3)
    stream.update(slice(0, 1), slice(0, 1), np.array([[2.0]], dtype=np.float32))
    stream.update(slice(0, 1), slice(1, 3), np.array([[0.5, 0.0]]))
    with pytest.warns(WidenedInputWarning, match="tile: torch.float16"):
        stream.update(slice(1, 3), slice(1, 3), torch.tensor([[2.0, 0.25], [0.25, 2.0]]).half())
    b = stream.bounds()
    exact = ExactSpectrum(torch.tensor([[2.0, 0.5, 0], [0.5, 2, 0.25], [0, 0.25, 2]], dtype=F64))
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    with pytest.raises(TypeError, match=r"tile must be a torch\.Tensor"):
        StreamingBounds(1).update(slice(0, 1), slice(0, 1), [[1.0]])
    with pytest.raises(TypeError, match="floating-point"):
        StreamingBounds(1).update(slice(0, 1), slice(0, 1), torch.ones(1, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="positive number"):
        StreamingBounds(0)


def test_flush_to_zero_mode_is_refused():
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        with pytest.raises(RuntimeError, match="gradual underflow"):
            eig_bounds(torch.eye(2, dtype=F64))
        with pytest.raises(RuntimeError, match="gradual underflow"):
            StreamingBounds(1).update(slice(0, 1), slice(0, 1), torch.ones(1, 1))
    finally:
        torch.set_flush_denormal(False)
    assert eig_bounds(torch.eye(2, dtype=F64)).certified_min


def test_operator_overflow_is_an_error():
    class Huge:
        shape = (4, 4)

        def matvec(self, v):
            return v * 1e308 * 1e10

    with pytest.raises(ValueError, match="not finite"):
        eig_bounds(Huge(), method="lanczos")


@pytest.mark.parametrize("k", [-1000, 0, 1000])
def test_operator_lanczos_scale_safe(k):
    a = scale_tensor(WELL_CONDITIONED, k)

    class Op:
        shape = (4, 4)

        def matvec(self, v):
            return a @ v

    b = eig_bounds(Op(), method="lanczos", rtol=1e-10)
    ev = torch.linalg.eigvalsh(WELL_CONDITIONED)
    assert math.isclose(math.ldexp(b.lambda_max_lower, -k), float(ev[-1]), rel_tol=1e-8)
    assert math.isclose(math.ldexp(b.lambda_min_upper, -k), float(ev[0]), rel_tol=1e-8)


@pytest.mark.parametrize("k", [-1070, 0, 1000])
def test_pytorch_faces_of_the_reductions(k, monkeypatch):
    """The PyTorch expressions used on CUDA (and without the compiled module) certify too."""
    from lplr_fast.spectrum import native

    monkeypatch.setattr(native, "_native_for", lambda t: None)
    a = scale_tensor(WELL_CONDITIONED, k)
    exact = ExactSpectrum(a)
    b = eig_bounds(a)
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper)
    for upper in (True, False):
        stream = StreamingBounds(4, upper=upper, psd=False)
        feed(stream, a, 3, upper)
        sb = stream.bounds()
        assert exact.min_in(sb.lambda_min_lower, sb.lambda_min_upper)
        assert exact.max_in(sb.lambda_max_lower, sb.lambda_max_upper)
    got = ntk_distance(torch.zeros_like(a), a)
    assert exact.norm2_in(got.lower, got.upper)


def test_distance_above_the_dense_limit_stays_certified(monkeypatch):
    """Above DENSE_LIMIT eig_bounds only estimates; the 2-norm bracket of ntk_distance then
    rests on Rayleigh quotients (below) and ‖K1 − K0‖_F (above): loose but rigorous."""
    from lplr_fast.spectrum import bounds

    from .test_certificate_properties import LargeSpec, build_large

    monkeypatch.setattr(bounds, "DENSE_LIMIT", 10)
    spec = LargeSpec(40, "indefinite", 3, 2, 0, 7)
    k0, d0, k, _ = build_large(spec)
    k1, _, _, _ = build_large(spec, d0 + torch.arange(40, dtype=F64) % 5)
    got = ntk_distance(k0, k1)
    assert got.certified and got.method == "lanczos"
    assert contains(got.lower, got.upper, Fraction(4) * Fraction(2) ** k)
    assert math.isfinite(got.upper)
