"""pytest-benchmark: certified eigenvalue brackets vs eigvalsh; Lanczos λ_max vs lobpcg and
scipy's eigsh (same process, a real NTK with n·k = 1024)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lplr_fast


@pytest.fixture(scope="module")
def kernel() -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 2)).double()
    x = torch.randn(512, 16, dtype=torch.float64)
    return lplr_fast.spectrum.as_matrix(lplr_fast.empirical_ntk(model, x))


@pytest.mark.benchmark(group="eig-both-ends")
def test_certified_bracket(benchmark, kernel):
    benchmark(lambda: lplr_fast.eig_bounds(kernel))


@pytest.mark.benchmark(group="eig-both-ends")
def test_eigvalsh(benchmark, kernel):
    benchmark(lambda: torch.linalg.eigvalsh(kernel))


@pytest.mark.benchmark(group="eig-lambda-max")
def test_lanczos_max(benchmark, kernel):
    benchmark(lambda: lplr_fast.eig_bounds(kernel, method="lanczos", which=("max",)))


@pytest.mark.benchmark(group="eig-lambda-max")
def test_lobpcg_max(benchmark, kernel):
    benchmark(lambda: torch.lobpcg(kernel, k=1, largest=True, tol=1e-6))


@pytest.mark.benchmark(group="eig-lambda-max")
def test_scipy_eigsh_max(benchmark, kernel):
    eigsh = pytest.importorskip("scipy.sparse.linalg").eigsh
    a = kernel.numpy()
    benchmark(lambda: eigsh(a, k=1, which="LA", tol=1e-6, return_eigenvectors=False))
