"""pytest-benchmark: structured NTK vs the torch.func Jacobian contraction (same process)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lplr_fast


@pytest.fixture(scope="module")
def model_and_x():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10)
    ).eval()
    return model, torch.randn(32, 64)


@pytest.mark.benchmark(group="ntk-mlp")
def test_structured(benchmark, model_and_x):
    model, x = model_and_x
    benchmark(lambda: lplr_fast.empirical_ntk(model, x))


@pytest.mark.benchmark(group="ntk-mlp")
def test_jacobian(benchmark, model_and_x):
    model, x = model_and_x
    benchmark.pedantic(
        lambda: lplr_fast.empirical_ntk(model, x, implementation="jacobian"), rounds=3, iterations=1
    )
