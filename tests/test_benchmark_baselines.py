"""The torch.func recipes the benchmarks time against compute the same kernel as ours
(skipped where the source tree's benchmarks/ package is absent, e.g. an installed wheel)."""

from __future__ import annotations

import pytest
import torch

import lplr_fast

baselines = pytest.importorskip("benchmarks.baselines")
mlp = pytest.importorskip("benchmarks.models").mlp


@pytest.mark.parametrize("compute", ["full", "trace"])
def test_tutorial_recipes_equal_structured_kernel(compute):
    torch.manual_seed(0)
    model = mlp([5, 7, 6, 3]).double()
    x1, x2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ours = lplr_fast.empirical_ntk(model, x1, x2, compute=compute)
    jac = baselines.jacobian_contraction(model, x1, x2, compute)
    vps = baselines.ntk_vector_products(model, x1, x2, compute, chunk=2)
    assert torch.allclose(jac, ours, rtol=1e-10, atol=1e-12)
    assert torch.allclose(vps, ours, rtol=1e-10, atol=1e-12)
