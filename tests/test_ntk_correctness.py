"""Every NTK path against the torch.func Jacobian-contraction reference (float64 ≤ 1e-10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lplr_fast import empirical_ntk

from .models import (
    EmbeddingModel,
    SequenceLinear,
    SharedLayer,
    SmallCNN,
    TinyResNet,
    mlp,
    randomise_batchnorm,
    seeded,
)

MODES = ["full", "trace", "diagonal"]


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).norm() / ref.norm()).item()


def inputs(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "image":
        return torch.randn(n, 2, 7, 7, generator=gen, dtype=torch.float64)
    if kind == "tokens":
        return torch.randint(0, 11, (n, 4), generator=gen)
    if kind == "sequence":
        return torch.randn(n, 5, 4, generator=gen, dtype=torch.float64)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64)


CASES = {
    "mlp_tanh": (lambda k: seeded(mlp, nn.Tanh, k), "vector"),
    "mlp_relu": (lambda k: seeded(mlp, nn.ReLU, k), "vector"),
    "mlp_gelu_nobias": (lambda k: seeded(mlp, nn.GELU, k, bias=False), "vector"),
    "cnn": (lambda k: seeded(SmallCNN, k), "image"),
    "resnet_bn_ln": (lambda k: seeded(TinyResNet, k), "image"),
    "embedding": (lambda k: seeded(EmbeddingModel, k), "tokens"),
    "shared": (lambda k: seeded(SharedLayer, k), "vector"),
    "sequence_linear": (lambda k: seeded(SequenceLinear, k), "sequence"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("compute", MODES)
def test_structured_matches_jacobian(case, k, cross, compute, rng):
    builder, kind = CASES[case]
    model = builder(k)
    if case == "resnet_bn_ln":
        randomise_batchnorm(model, rng)
    x1 = inputs(kind, 7, rng)
    x2 = inputs(kind, 5, rng) if cross else None
    ref = empirical_ntk(model, x1, x2, compute=compute, implementation="jacobian")
    got = empirical_ntk(model, x1, x2, compute=compute, block_size=3)
    assert got.shape == ref.shape
    assert rel(got, ref) <= 1e-10


@pytest.mark.parametrize("case", ["mlp_tanh", "cnn", "shared"])
@pytest.mark.parametrize("cross", [False, True])
def test_ntk_vp_matches_jacobian(case, cross, rng):
    builder, kind = CASES[case]
    model = builder(3)
    x1 = inputs(kind, 5, rng)
    x2 = inputs(kind, 4, rng) if cross else None
    ref = empirical_ntk(model, x1, x2, implementation="jacobian")
    assert rel(empirical_ntk(model, x1, x2, implementation="ntk_vp"), ref) <= 1e-10


def test_scalar_output_model_has_k_1(rng):
    model = seeded(
        lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    )
    x = inputs("vector", 6, rng)
    assert model(x).shape == (6,)
    got = empirical_ntk(model, x)
    assert got.shape == (6, 6, 1, 1)
    assert rel(got, empirical_ntk(model, x, implementation="jacobian")) <= 1e-10


@pytest.mark.parametrize("route", ["ghost", "materialize"])
@pytest.mark.parametrize("compute", MODES)
def test_conv_routes_agree(route, compute, rng):
    model = seeded(SmallCNN, 4)
    x1, x2 = inputs("image", 6, rng), inputs("image", 3, rng)
    ref = empirical_ntk(model, x1, x2, compute=compute, implementation="jacobian")
    got = empirical_ntk(model, x1, x2, compute=compute, conv_route=route)
    assert rel(got, ref) <= 1e-10


@pytest.mark.parametrize("compute", MODES)
def test_float32_agrees(compute, rng):
    model = seeded(SmallCNN, 3).float()
    x = inputs("image", 6, rng).float()
    ref = empirical_ntk(model.double(), x.double(), compute=compute, implementation="jacobian")
    model.float()
    got = empirical_ntk(model, x, compute=compute)
    assert got.dtype == torch.float32
    assert rel(got.double(), ref) <= 1e-5


def test_dtype_argument_copies_model(rng):
    model = seeded(mlp).float()
    x = inputs("vector", 5, rng).float()
    got = empirical_ntk(model, x, dtype=torch.float64)
    assert got.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32
    ref = empirical_ntk(model.double(), x.double(), implementation="jacobian")
    assert rel(got, ref) <= 1e-10


def test_frozen_parameters_are_excluded(rng):
    model = seeded(mlp)
    model[0].weight.requires_grad_(False)
    model[4].bias.requires_grad_(False)
    x = inputs("vector", 6, rng)
    ref = empirical_ntk(model, x, implementation="jacobian")
    assert rel(empirical_ntk(model, x), ref) <= 1e-10
    assert model[0].weight.requires_grad is False  # untouched
