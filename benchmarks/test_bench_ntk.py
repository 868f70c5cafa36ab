"""pytest-benchmark: structured NTK vs the torch.func Jacobian contraction (same process)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lplr_fast

from .models import LSTMModel, TransformerClassifier


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


@pytest.fixture(scope="module")
def sequence_models():
    torch.manual_seed(0)
    transformer = TransformerClassifier(dim=32, heads=2).eval()
    lstm = LSTMModel(d=8, hidden=32).eval()
    return [
        (transformer, torch.randint(0, 1000, (8, 16))),
        (lstm, torch.randn(8, 16, 8)),
    ]


@pytest.mark.benchmark(group="ntk-sequence")
@pytest.mark.parametrize("which", [0, 1], ids=["transformer", "lstm"])
@pytest.mark.parametrize("impl", ["structured", "jacobian", "ntk_vp"])
def test_sequence_models(benchmark, sequence_models, which, impl):
    model, x = sequence_models[which]
    benchmark.pedantic(
        lambda: lplr_fast.empirical_ntk(model, x, implementation=impl), rounds=2, iterations=1
    )


@pytest.mark.benchmark(group="ntk-probe")
@pytest.mark.parametrize("verify", ["off", "probe"])
def test_probe_overhead(benchmark, model_and_x, verify):
    model, x = model_and_x
    benchmark(lambda: lplr_fast.empirical_ntk(model, x, verify=verify))
