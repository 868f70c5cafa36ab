"""Bad input to the NTK engine gets a clear error naming the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lplr_fast import empirical_ntk

from .models import EmbeddingModel, TinyResNet, mlp, seeded


@pytest.fixture
def model():
    return seeded(mlp)


def test_feature_shape_mismatch(model):
    with pytest.raises(ValueError, match="different per-sample shapes"):
        empirical_ntk(
            model, torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
        )


def test_integer_input_the_model_cannot_take(model):
    for implementation in ("structured", "jacobian"):
        with pytest.raises(TypeError, match=r"x1 has dtype torch.int64 .*floating-point"):
            empirical_ntk(model, torch.ones(3, 6, dtype=torch.long), implementation=implementation)


def test_integer_input_to_embedding_model_is_fine():
    m = seeded(EmbeddingModel)
    assert empirical_ntk(m, torch.randint(0, 11, (3, 4))).shape == (3, 3, 3, 3)


def test_complex_input(model):
    with pytest.raises(TypeError, match="unsupported dtype"):
        empirical_ntk(model, torch.randn(3, 6, dtype=torch.complex128))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input(model, bad):
    x = torch.randn(3, 6, dtype=torch.float64)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x1 contains NaN or Inf"):
        empirical_ntk(model, x)


def test_non_finite_parameter(model):
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '2.weight' contains NaN or Inf"):
        empirical_ntk(model, torch.randn(3, 6, dtype=torch.float64))


def test_no_trainable_parameters(model):
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        empirical_ntk(model, torch.randn(3, 6, dtype=torch.float64))


def test_device_mismatch(model):
    if not torch.cuda.is_available():
        x = torch.randn(3, 6, dtype=torch.float64, device="meta")
    else:
        x = torch.randn(3, 6, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match=r"x1 is on .* but the model's parameters are on cpu"):
        empirical_ntk(model, x)


def test_batchnorm_train_mode_error_names_module():
    m = seeded(TinyResNet).train()
    with pytest.raises(
        ValueError,
        match=r"BatchNorm module\(s\) \['block.bn1', 'block.bn2'\].*"
        r"batchnorm='eval'",
    ):
        empirical_ntk(m, torch.randn(3, 2, 7, 7, dtype=torch.float64))


def test_dropout_train_mode():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    with pytest.raises(ValueError, match=r"dropout .* training mode"):
        empirical_ntk(m, torch.randn(3, 6, dtype=torch.float64))


def test_tied_weights_are_exact():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    m[2].weight = m[0].weight
    x = torch.randn(3, 4, dtype=torch.float64)
    ref = empirical_ntk(m, x, implementation="jacobian")
    got = empirical_ntk(m, x)
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-10
    assert m[2].weight is m[0].weight and isinstance(m[0].weight, nn.Parameter)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compute": "sum"}, "compute must be one of"),
        ({"implementation": "fast"}, "implementation must be one of"),
        ({"batchnorm": "freeze"}, "batchnorm must be one of"),
        ({"block_size": 0}, "block_size must be a positive integer"),
        ({"dtype": torch.float16}, "dtype must be"),
    ],
)
def test_bad_options(model, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        empirical_ntk(model, torch.randn(3, 6, dtype=torch.float64), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        empirical_ntk(lambda x: x, torch.randn(3, 6))
