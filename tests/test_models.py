"""lplr_fast.models: the structured NTK equals the torch.func Jacobian reference in float64,
the NTK parameterisation computes what neural-tangents' stax.Dense(parameterization="ntk")
computes, and bad arguments are refused."""

from __future__ import annotations

import math

import pytest
import torch

import lplr_fast
from lplr_fast.models import MLP, ResNetCNN


def _ntk_error(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    fast = lplr_fast.empirical_ntk(model, x)
    ref = lplr_fast.empirical_ntk(model, x, implementation="jacobian")
    return float((fast - ref).abs().max()), float(ref.abs().max())


@pytest.mark.parametrize("parameterization", ["standard", "ntk"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "erf"])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_ntk_matches_jacobian(parameterization, activation, bias, rng):
    torch.manual_seed(3)
    model = MLP(5, [9, 7], 3, activation, parameterization, bias).double()
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    err, scale = _ntk_error(model, x)
    assert err <= 1e-10 * max(1.0, scale)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_resnet_ntk_matches_jacobian(norm, rng):
    torch.manual_seed(4)
    model = ResNetCNN(2, 3, widths=(4, 8), blocks_per_stage=2, norm=norm).double().eval()
    x = torch.randn(5, 2, 8, 8, generator=rng, dtype=torch.float64)
    err, scale = _ntk_error(model, x)
    assert err <= 1e-10 * max(1.0, scale)
    assert model(x).shape == (5, 3)


def test_ntk_parameterisation_formula(rng):
    """f(x) = σ_b·b₂ + σ_w/√w · W₂ φ(σ_w/√d · W₁ x + σ_b·b₁) with N(0, 1) parameters."""
    torch.manual_seed(5)
    w_std, b_std = 1.3, 0.2
    model = MLP(6, [11], 2, "erf", "ntk", w_std=w_std, b_std=b_std).double()
    l1, l2 = model.layers
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    h = torch.erf(w_std / math.sqrt(6) * x @ l1.weight.T + b_std * l1.bias)
    expected = w_std / math.sqrt(11) * h @ l2.weight.T + b_std * l2.bias
    assert torch.allclose(model(x), expected, rtol=1e-13, atol=1e-13)
    wide = MLP(20, [4000], 1, "tanh", "ntk").double()
    for layer in wide.layers:  # N(0, 1) entries, whatever the fan-in
        assert abs(float(layer.weight.detach().std()) - 1.0) < 0.02


@pytest.mark.parametrize("b_std", [1e-40, 1e35])
def test_ntk_parameterisation_extreme_b_std(b_std, rng):
    """Review 13 item 8: b_std = 1e-40 in float32 gave NaN (the folded form's input scale
    σ_w/(σ_b√d) ≈ 4e39 overflows); such layers are computed in the direct form."""
    torch.manual_seed(7)
    model = MLP(6, [11], 2, "tanh", "ntk", b_std=b_std)
    x = torch.randn(4, 6, generator=rng)
    (l1, l2), (b1, b2) = model.layers, model.biases
    xd = x.double()
    h = torch.tanh(xd @ l1.weight.double().T / math.sqrt(6) + b_std * b1.bias.double())
    expected = h @ l2.weight.double().T / math.sqrt(11) + b_std * b2.bias.double()
    with torch.no_grad():
        out = model(x)
        expected = expected.detach()
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    assert torch.allclose(
        out.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())
    )
    err, scale = _ntk_error(model.double(), xd)
    assert err <= 1e-10 * max(1.0, scale)
    assert not hasattr(MLP(6, [11], 2, "tanh", "ntk", b_std=1e-3), "biases")


def test_standard_and_ntk_same_function_at_init(rng):
    x = torch.randn(8, 10, generator=rng, dtype=torch.float64)
    torch.manual_seed(6)
    std = MLP(10, [64, 64], 2, "tanh", "standard").double()
    torch.manual_seed(6)
    ntk = MLP(10, [64, 64], 2, "tanh", "ntk").double()
    assert torch.allclose(std(x), ntk(x), rtol=1e-5, atol=1e-6)  # float32 draws, scaled
    # …but not the same kernel: the standard NTK's scale grows with the width
    assert float(lplr_fast.empirical_ntk(std, x).diagonal().mean()) > 5 * float(
        lplr_fast.empirical_ntk(ntk, x).diagonal().mean()
    )


def test_ntk_parameterisation_kernel_converges_with_width(rng):
    """In NTK parameterisation Θ at initialisation concentrates as the width grows (its
    fluctuation across seeds shrinks); in standard parameterisation its scale grows."""
    x = torch.randn(6, 4, generator=rng, dtype=torch.float64)

    def spread(width: int, parameterization: str) -> tuple[float, float]:
        kernels = []
        for seed in range(4):
            torch.manual_seed(seed)
            model = MLP(4, [width], 1, "tanh", parameterization).double()
            kernels.append(lplr_fast.empirical_ntk(model, x).reshape(6, 6))
        stack = torch.stack(kernels)
        return float(stack.std(0).norm() / stack.mean(0).norm()), float(stack.mean(0).norm())

    small, large = spread(32, "ntk"), spread(2048, "ntk")
    assert large[0] < small[0] / 3
    assert 0.5 < large[1] / small[1] < 2
    assert spread(2048, "standard")[1] > 20 * spread(32, "standard")[1]


def test_model_bad_arguments():
    for kwargs, message in (
        ({"activation": "sigmoid"}, "activation must be"),
        ({"parameterization": "mup"}, "parameterization must be"),
        ({"widths": [8, 0]}, "widths"),
        ({"widths": [8.5]}, "widths"),
        ({"w_std": 0.0}, "w_std"),
        ({"b_std": -1.0}, "b_std"),
    ):
        with pytest.raises(ValueError, match=message):
            MLP(**{"in_features": 3, "widths": [4], "out_features": 1, **kwargs})
    assert MLP(3, [], 2, bias=False, b_std=0.0)(torch.zeros(1, 3)).shape == (1, 2)
    with pytest.raises(ValueError, match="norm must be"):
        ResNetCNN(3, 10, norm="layer")
    with pytest.raises(ValueError, match="at least one"):
        ResNetCNN(3, 10, widths=())
    with pytest.raises(ValueError, match="blocks_per_stage"):
        ResNetCNN(3, 10, blocks_per_stage=0)
