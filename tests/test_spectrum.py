"""Certified eigenvalue brackets against exact spectra (random and adversarial)."""

from __future__ import annotations

import math

import pytest
import torch

from lplr_fast import eig_bounds, empirical_ntk
from lplr_fast.spectrum import as_matrix

from .models import mlp, seeded


def with_spectrum(eigs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = eigs.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = (q * eigs) @ q.T
    return (a + a.T) / 2


def spectra(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    out = {
        "uniform": u + 0.1,
        "clustered": 1.0 + 1e-9 * u,
        "dominant": torch.cat([torch.tensor([1e4], dtype=torch.float64), u[1:] + 0.05]),
        "indefinite": u - 0.5,
    }
    out["power_law"] = torch.arange(1, n + 1, dtype=torch.float64) ** -2.0 * (1 + 0.01 * u)
    out["close_pair_bottom"] = torch.cat(
        [torch.tensor([1e-4, 1e-4 * (1 + 1e-7)], dtype=torch.float64), u + 1.0]
    )[:n]
    for e in (1, 3, 6, 9, 12):
        out[f"near_singular_1e-{e}"] = torch.cat(
            [torch.tensor([10.0**-e], dtype=torch.float64), u[1:] + 10.0**-e]
        )
    if n > 2:
        out["singular"] = torch.cat(
            [torch.zeros(max(1, n // 5), dtype=torch.float64), u[: n - max(1, n // 5)] + 0.5]
        )
    return out


def check_bracket(b, exact: torch.Tensor, rtol: float = 1e-6) -> None:
    lmin, lmax = float(exact[0]), float(exact[-1])
    assert b.certified_min and b.certified_max
    assert b.lambda_min_lower <= lmin <= b.lambda_min_upper, (b, lmin)
    assert b.lambda_max_lower <= lmax <= b.lambda_max_upper, (b, lmax)
    width_min = b.lambda_min_upper - b.lambda_min_lower
    width_max = b.lambda_max_upper - b.lambda_max_lower
    scale = max(abs(lmax), abs(lmin))
    if abs(lmin) >= 1e-6 * scale:
        assert width_min <= max(rtol * abs(lmin), 8 * b.margin_min), (width_min, b)
    else:
        assert width_min <= 8 * b.margin_min + rtol * abs(lmin), (width_min, b)
    assert width_max <= max(rtol * abs(lmax), 8 * b.margin_max)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
@pytest.mark.parametrize("method", ["dense", "cholesky"])
def test_certified_brackets_hold(n, method, rng):
    for name, eigs in spectra(n, rng).items():
        a = with_spectrum(eigs, rng)
        exact = torch.linalg.eigvalsh(a)
        b = eig_bounds(a, method=method)
        check_bracket(b, exact)
        assert b.method == method, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_input_certified_for_matrix_as_given(dtype, rng):
    a = with_spectrum(torch.rand(120, generator=rng, dtype=torch.float64) + 1e-3, rng).to(dtype)
    exact = torch.linalg.eigvalsh(a.double())  # the float32 matrix itself, exactly widened
    check_bracket(eig_bounds(a), exact)


def test_random_psd_gram_matrices(rng):
    for trial in range(20):
        n = int(torch.randint(2, 80, (1,), generator=rng))
        rank = int(torch.randint(1, n + 1, (1,), generator=rng))
        j = torch.randn(n, rank, generator=rng, dtype=torch.float64) * 10 ** (trial % 5 - 2)
        a = j @ j.T
        check_bracket(eig_bounds(a), torch.linalg.eigvalsh(a))


def test_real_ntk_four_dim_input(rng):
    model = seeded(mlp)
    x = torch.randn(20, 6, generator=rng, dtype=torch.float64)
    kernel = empirical_ntk(model, x)
    b = eig_bounds(kernel)
    assert b.n == 60
    check_bracket(b, torch.linalg.eigvalsh(as_matrix(kernel)))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dense", "cholesky"])
def test_large_n2000(method, rng):
    eigs = torch.cat(
        [
            torch.tensor([5e3], dtype=torch.float64),
            torch.rand(1999, generator=rng, dtype=torch.float64) + 1e-3,
        ]
    )
    a = with_spectrum(eigs, rng)
    check_bracket(eig_bounds(a, method=method), torch.linalg.eigvalsh(a))


def test_lanczos_lambda_max_few_matvecs(rng):
    # NTK-like: one dominant eigenvalue, decaying tail
    eigs = torch.cat(
        [torch.tensor([1e3], dtype=torch.float64), 1.0 / torch.arange(1, 500, dtype=torch.float64)]
    )
    a = with_spectrum(eigs, rng)
    b = eig_bounds(a, method="lanczos", which=("max",))
    assert b.lambda_max_lower <= 1e3 <= b.lambda_max_upper
    assert (b.lambda_max_upper - b.lambda_max_lower) <= 1e-6 * 1e3
    assert b.matvecs <= 20
    assert not b.certified_max and not b.certified_min


def test_lanczos_operator_psd(rng):
    j = torch.randn(200, 30, generator=rng, dtype=torch.float64)

    class Op:
        shape = (200, 200)
        psd = True

        def matvec(self, v):
            return j @ (j.T @ v)

    b = eig_bounds(Op(), which=("min", "max"))
    exact = torch.linalg.eigvalsh(j @ j.T)
    assert b.lambda_min_lower == 0.0 and b.lambda_min_upper >= float(exact[0])
    assert b.lambda_max_lower <= float(exact[-1]) <= b.lambda_max_upper


def test_uncertified_dense_is_labelled(rng):
    a = with_spectrum(torch.rand(30, generator=rng, dtype=torch.float64), rng)
    b = eig_bounds(a, certify=False)
    assert not b.certified_min and not b.certified_max


def test_summary_and_dict(rng):
    a = with_spectrum(torch.rand(10, generator=rng, dtype=torch.float64) + 1, rng)
    b = eig_bounds(a)
    assert "λ_min ∈" in str(b) and "certified" in str(b)
    d = b.to_dict()
    assert set(d) >= {
        "lambda_min_lower",
        "lambda_min_upper",
        "lambda_max_lower",
        "lambda_max_upper",
        "certified_min",
        "certified_max",
        "method",
        "matvecs",
        "seconds",
    }
    with pytest.raises(AttributeError):
        b.lambda_min_lower = 0.0  # frozen


def test_one_end_only(rng):
    a = with_spectrum(torch.rand(10, generator=rng, dtype=torch.float64) + 1, rng)
    b = eig_bounds(a, which=("max",))
    assert b.lambda_min_lower == -math.inf and b.lambda_min_upper == math.inf


@pytest.mark.parametrize(
    "bad, err, match",
    [
        (torch.zeros(3, 4), ValueError, "square"),
        (torch.zeros(0, 0), ValueError, "empty"),
        (torch.eye(3, dtype=torch.complex128), TypeError, "complex"),
        (torch.eye(3, dtype=torch.int64), TypeError, "floating-point"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), ValueError, "NaN or Inf"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64), ValueError, "not symmetric"),
    ],
)
def test_bad_input(bad, err, match):
    with pytest.raises(err, match=match):
        eig_bounds(bad)


def test_bad_options():
    with pytest.raises(ValueError, match="which"):
        eig_bounds(torch.eye(3), which=("middle",))
    with pytest.raises(ValueError, match="unknown method"):
        eig_bounds(torch.eye(3), method="qr")
