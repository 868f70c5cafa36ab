"""Streaming reductions, StreamingBounds, NTKOperator and ntk_distance against dense values."""

from __future__ import annotations

import math

import pytest
import torch

import lplr_fast
from lplr_fast import (
    NTKOperator,
    StreamingBounds,
    eig_bounds,
    empirical_ntk,
    ntk_blocks,
    ntk_distance,
)
from lplr_fast.spectrum import as_matrix, native

from .models import SmallCNN, TinyResNet, mlp, randomise_batchnorm, seeded
from .test_spectrum import spectra, with_spectrum


def dense_tile_stats(t: torch.Tensor, row0: int, col0: int):
    t = t.double()
    rows = torch.arange(row0, row0 + t.shape[0])[:, None]
    cols = torch.arange(col0, col0 + t.shape[1])[None, :]
    on = rows == cols
    off = t.abs().masked_fill(on, 0)
    return (t * t).sum(), t[on].sum(), off.sum(1), off.sum(0)


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reductions_match_torch(use_native, dtype, rng, monkeypatch):
    if not use_native:
        monkeypatch.setattr(native, "_native_for", lambda t: None)
    a = torch.randn(70, 70, generator=rng, dtype=torch.float64).to(dtype)
    for r0, c0, r1, c1 in [(0, 0, 70, 70), (5, 20, 33, 61), (40, 3, 70, 9), (10, 10, 11, 11)]:
        tile = a[r0:r1, c0:c1]  # non-contiguous
        s = native.tile_stats(tile, r0, c0)
        sumsq, diag, row_abs, col_abs = dense_tile_stats(tile, r0, c0)
        assert s.nonfinite == 0
        assert math.isclose(s.sumsq, float(sumsq), rel_tol=1e-12)
        assert math.isclose(s.diag_sum, float(diag), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(s.max_abs, float(tile.double().abs().max()), rel_tol=1e-15)
        torch.testing.assert_close(s.row_abs, row_abs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.col_abs, col_abs, rtol=1e-12, atol=1e-12)
    sq = native.square_stats(a)
    a64 = a.double()
    assert math.isclose(sq.asym_fro, float((a64 - a64.T).norm()), rel_tol=1e-12)
    assert math.isclose(sq.fro, float(a64.norm()), rel_tol=1e-12)
    assert math.isclose(sq.trace, float(a64.trace()), rel_tol=1e-12)
    assert math.isclose(sq.max_abs_diag, float(a64.diagonal().abs().max()), rel_tol=1e-15)
    torch.testing.assert_close(sq.row_abs, a64.abs().sum(1) - a64.diagonal().abs())
    for v in (torch.randn(70, generator=rng, dtype=dtype), torch.randn(70, 3, dtype=dtype)):
        sym = torch.triu(a) + torch.triu(a, 1).T
        tol = 1e-4 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(native.symv_upper(a, v), sym @ v, rtol=tol, atol=tol)
    v = torch.randn(70, generator=rng, dtype=torch.float64)
    expect = float(v.abs() @ (a64.abs() @ v.abs()))
    assert math.isclose(native.abs_quadratic(a, v), expect, rel_tol=1e-12)


def test_reductions_count_nonfinite(rng):
    a = torch.randn(20, 20, generator=rng, dtype=torch.float64)
    a[3, 4], a[7, 7], a[0, 19] = math.nan, math.inf, -math.inf
    assert native.tile_stats(a, 0, 0).nonfinite == 3
    assert native.square_stats(a).nonfinite == 3
    with pytest.raises(ValueError, match="3 NaN or Inf"):
        eig_bounds(a)


def feed(stream: StreamingBounds, a: torch.Tensor, block: int, upper: bool) -> None:
    n = a.shape[0]
    for r in range(0, n, block):
        for c in range(r if upper else 0, n, block):
            rows, cols = slice(r, min(n, r + block)), slice(c, min(n, c + block))
            stream.update(rows, cols, a[rows, cols])


@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("block", [1, 7, 64])
def test_streaming_equals_dense_values(upper, block, rng):
    a = with_spectrum(torch.rand(50, generator=rng, dtype=torch.float64) + 0.01, rng)
    stream = StreamingBounds(50, upper=upper)
    feed(stream, a, block, upper)
    assert math.isclose(stream.trace, float(a.trace()), rel_tol=1e-12)
    assert math.isclose(stream.frobenius, float(a.norm()), rel_tol=1e-12)
    assert stream.diagonal_min == float(a.diagonal().min())
    assert stream.diagonal_max == float(a.diagonal().max())
    radius = a.abs().sum(1) - a.diagonal().abs()
    lo, hi = stream.gershgorin()
    assert math.isclose(lo, float((a.diagonal() - radius).min()), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(hi, float((a.diagonal() + radius).max()), rel_tol=1e-9)


def test_streaming_bounds_hold_on_many_spectra(rng):
    for n in (1, 2, 9, 40):
        for name, eigs in spectra(n, rng).items():
            a = with_spectrum(eigs, rng)
            exact = torch.linalg.eigvalsh(a)
            psd = bool(exact[0] >= 0)
            stream = StreamingBounds(n, psd=psd)
            feed(stream, a, 8, True)
            b = stream.bounds()
            assert b.lambda_min_lower <= float(exact[0]) <= b.lambda_min_upper, (name, b)
            assert b.lambda_max_lower <= float(exact[-1]) <= b.lambda_max_upper, (name, b)


def test_streaming_from_the_engine_and_layer_additivity(rng):
    model = seeded(mlp, k=2)
    x = torch.randn(23, 6, generator=rng, dtype=torch.float64)
    stream = StreamingBounds(23, per_layer=True)
    kernel = empirical_ntk(model, x, bounds=stream, block_size=5)
    a = as_matrix(kernel)
    exact = torch.linalg.eigvalsh(a)
    assert math.isclose(stream.trace, float(a.trace()), rel_tol=1e-12)
    assert math.isclose(stream.frobenius, float(a.norm()), rel_tol=1e-12)
    assert stream.layers == ["0", "2", "4"]
    b = stream.bounds()
    assert b.lambda_min_lower <= float(exact[0]) <= b.lambda_min_upper
    assert b.lambda_max_lower <= float(exact[-1]) <= b.lambda_max_upper
    _, parts = empirical_ntk(model, x, return_layers=True)
    assert (
        stream.layer_additivity_lower()
        <= sum(float(torch.linalg.eigvalsh(as_matrix(p))[0]) for p in parts.values()) + 1e-9
    )
    kernel_again, auto = empirical_ntk(model, x, bounds=True)
    torch.testing.assert_close(kernel_again, kernel, rtol=1e-12, atol=1e-12)
    assert auto.trace == pytest.approx(stream.trace, rel=1e-12)
    _, parts_again, auto_layers = empirical_ntk(model, x, bounds=True, return_layers=True)
    assert auto_layers.layers == ["0", "2", "4"] and set(parts_again) == {"0", "2", "4"}
    blocks = StreamingBounds(23)
    for _ in ntk_blocks(model, x, block_size=4, bounds=blocks):
        pass
    assert math.isclose(blocks.trace, stream.trace, rel_tol=1e-12)
    trace_stream = StreamingBounds(23)
    k_trace = empirical_ntk(model, x, compute="trace", bounds=trace_stream)
    assert math.isclose(trace_stream.frobenius, float(k_trace.norm()), rel_tol=1e-12)


def test_streaming_bad_use(rng):
    a = torch.eye(6, dtype=torch.float64)
    stream = StreamingBounds(6)
    stream.update(slice(0, 3), slice(0, 3), a[:3, :3])
    with pytest.raises(ValueError, match="covered"):
        stream.bounds()
    with pytest.raises(ValueError, match="above the diagonal"):
        stream.update(slice(3, 6), slice(0, 3), a[3:, :3])
    with pytest.raises(ValueError, match="outside"):
        stream.update(slice(0, 3), slice(4, 8), a[:3, :3])
    with pytest.raises(ValueError, match="does not match"):
        stream.update(slice(0, 3), slice(3, 6), a[:2, :3])
    bad = a[:3, 3:].clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        stream.update(slice(0, 3), slice(3, 6), bad)
    with pytest.raises(ValueError, match="no per-layer"):
        StreamingBounds(2).layer_additivity_lower()
    model = seeded(mlp)
    x = torch.randn(5, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric kernel"):
        empirical_ntk(model, x, x, bounds=StreamingBounds(5))
    with pytest.raises(ValueError, match="n=4"):
        empirical_ntk(model, x, bounds=StreamingBounds(4))


MODELS = {
    "mlp": (lambda: seeded(mlp, k=3), (6,)),
    "cnn": (lambda: seeded(SmallCNN, k=2), (2, 8, 8)),
    "resnet": (lambda: seeded(TinyResNet, k=2), (2, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("chunk", [None, 3])
def test_operator_matches_dense_kernel(name, chunk, rng):
    build, shape = MODELS[name]
    model = build()
    randomise_batchnorm(model, rng)
    x = torch.randn(7, *shape, generator=rng, dtype=torch.float64)
    op = NTKOperator(model, x, chunk_size=chunk)
    a = as_matrix(empirical_ntk(model, x, implementation="jacobian"))
    assert op.shape == tuple(a.shape)
    for _ in range(3):
        v = torch.randn(op.shape[0], generator=rng, dtype=torch.float64)
        got, want = op.matvec(v), a @ v
        assert float((got - want).norm() / want.norm()) <= 1e-10
    torch.testing.assert_close(op.diagonal(), a.diagonal(), rtol=1e-10, atol=1e-12)
    assert op.matvecs == 3


def test_operator_lanczos_brackets(rng):
    model = seeded(mlp, k=2)
    x = torch.randn(40, 6, generator=rng, dtype=torch.float64)
    op = NTKOperator(model, x)
    exact = torch.linalg.eigvalsh(op.to_dense())
    b = eig_bounds(op, method="lanczos", rtol=1e-8)
    assert not b.certified_max and b.method == "lanczos"
    assert b.lambda_max_lower <= float(exact[-1]) * (1 + 1e-12)
    assert float(exact[-1]) <= b.lambda_max_upper * (1 + 1e-12)
    assert b.lambda_min_lower == 0.0 and b.lambda_min_upper >= float(exact[0]) - 1e-12
    assert b.matvecs == op.matvecs


def test_operator_bad_input():
    model = seeded(mlp)
    x = torch.randn(4, 6, dtype=torch.float64)
    op = NTKOperator(model, x)
    with pytest.raises(ValueError, match="shape"):
        op.matvec(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        op.matvec(torch.full((12,), math.nan, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk_size"):
        NTKOperator(model, x, chunk_size=0)
    bn = seeded(TinyResNet).train()
    with pytest.raises(ValueError, match="BatchNorm"):
        NTKOperator(bn, torch.randn(3, 2, 6, 6, dtype=torch.float64))


def test_ntk_distance_all_input_kinds(rng):
    model = seeded(mlp, k=2)
    x = torch.randn(15, 6, generator=rng, dtype=torch.float64)
    k0 = empirical_ntk(model, x)
    moved = seeded(mlp, k=2, seed=1)
    k1 = empirical_ntk(moved, x)
    d = as_matrix(k1) - as_matrix(k0)
    op_exact = float(torch.linalg.matrix_norm(d, 2))
    fro_exact = float(d.norm())
    two = ntk_distance(k0, k1)
    assert two.certified and two.lower <= op_exact <= two.upper
    assert two.upper - two.lower <= 1e-6 * op_exact
    fro = ntk_distance(k0, k1, "fro")
    assert math.isclose(float(fro), fro_exact, rel_tol=1e-13)
    tiles = ntk_distance(ntk_blocks(model, x, block_size=4), ntk_blocks(moved, x, block_size=4),
                         "fro", n=15)  # fmt: skip
    assert math.isclose(float(tiles), fro_exact, rel_tol=1e-12)
    tiles2 = ntk_distance(ntk_blocks(model, x, block_size=4), ntk_blocks(moved, x, block_size=4),
                          n=15)  # fmt: skip
    assert tiles2.lower <= op_exact <= tiles2.upper
    ops = ntk_distance(NTKOperator(model, x), NTKOperator(moved, x), rtol=1e-10)
    assert ops.lower <= op_exact * (1 + 1e-10) and math.isclose(ops.lower, op_exact, rel_tol=1e-8)
    mixed = ntk_distance(k0, NTKOperator(moved, x), "fro")
    assert math.isclose(float(mixed), fro_exact, rel_tol=1e-10)
    with pytest.raises(ValueError, match="ord"):
        ntk_distance(k0, k1, ord=1)
    with pytest.raises(ValueError, match="shape"):
        ntk_distance(k0, k1[:3, :3])
    with pytest.raises(ValueError, match="n \\(the number"):
        ntk_distance(ntk_blocks(model, x), ntk_blocks(moved, x))


def test_public_names():
    for name in ("StreamingBounds", "NTKOperator", "ntk_distance", "NormBounds"):
        assert name in lplr_fast.__all__
