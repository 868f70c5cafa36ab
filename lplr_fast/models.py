"""Models of the LPLR study: an MLP in standard or NTK parameterisation and a ResNet-style CNN.

Both are plain ``torch.nn`` modules built from ``nn.Linear`` / ``nn.Conv2d`` (so the structured
NTK engine applies its exact Gram rules to them) plus elementwise scalings and norms.

Parameterisations of a dense layer with fan-in d (neural-tangents' ``stax.Dense`` conventions,
Jacot et al. 2018 for "ntk"; σ_w = ``w_std``, σ_b = ``b_std``):

* ``"standard"``: W ~ N(0, σ_w²/d), b ~ N(0, σ_b²), z = W x + b;
* ``"ntk"``: W ~ N(0, 1), b ~ N(0, 1), z = σ_w/√d · W x + σ_b · b.

Drawn from the same seed, the two compute the same function at initialisation; they differ in
their gradients, hence in the NTK's scale (standard: λ_max(Θ) grows with the width; ntk: the
NTK converges as the width grows) and in how far a fixed step moves the network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["tanh", "relu", "gelu", "erf"]
Parameterization = Literal["standard", "ntk"]
Norm = Literal["batch", "group", "none"]


class Erf(nn.Module):
    """The error function as a module (the activation with closed-form NNGP/NTK kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "erf": Erf,
}


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive_ints(name: str, values: Sequence[int]) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must hold positive integers, got {list(values)!r}")


class MLP(nn.Module):
    """Fully connected network in_features → widths[0] → … → widths[-1] → out_features.

    Args:
        in_features: input size d (inputs of shape (n, d), or (n, ...) flattened to d).
        widths: hidden widths, one per hidden layer (may be empty: a linear model).
        out_features: outputs k per sample.
        activation: "tanh" | "relu" | "gelu" | "erf", after every hidden layer.
        parameterization: "standard" | "ntk" (module docstring).
        bias: give every layer a bias.
        w_std, b_std: σ_w and σ_b of the parameterisation.

    Attributes:
        layers: the ``nn.Linear`` layers; ``input_scales[i]`` / ``output_scales[i]`` are the
        constants the i-th layer's input and output are multiplied by (1 for "standard").
        biases: only when some layer needs it — "ntk" with a ratio σ_w/(σ_b·√d) outside
        [1e-30, 1e30], which the folded form σ_b·(W(x·σ_w/(σ_b√d)) + b) would overflow in
        float32: that layer is computed in the direct form σ_w/√d·W x + σ_b·b, its bias in
        ``biases[i]`` (a :class:`ScaledBias`; ``layers[i].bias`` is None).
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int,
        activation: Activation = "tanh",
        parameterization: Parameterization = "standard",
        bias: bool = True,
        *,
        w_std: float = 1.0,
        b_std: float = 0.1,
    ) -> None:
        super().__init__()
        widths = list(widths)
        _check_positive_ints("in_features", [in_features])
        _check_positive_ints("out_features", [out_features])
        _check_positive_ints("widths", widths)
        _check_choice("activation", activation, list(_ACTIVATIONS))
        _check_choice("parameterization", parameterization, ["standard", "ntk"])
        if not (math.isfinite(w_std) and w_std > 0):
            raise ValueError(f"w_std must be positive and finite, got {w_std!r}")
        if bias and not (math.isfinite(b_std) and b_std > 0):
            raise ValueError(f"b_std must be positive and finite when bias=True, got {b_std!r}")
        self.parameterization = parameterization
        self.activation_name = activation
        sizes = [in_features, *widths, out_features]
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=bias) for d_in, d_out in itertools.pairwise(sizes)
        )
        self.act = _ACTIVATIONS[activation]()
        self.input_scales: list[float] = []
        self.output_scales: list[float] = []
        direct: dict[int, ScaledBias] = {}
        for i, layer in enumerate(self.layers):
            fan_in = layer.in_features
            w_factor = w_std / math.sqrt(fan_in)
            ratio = w_factor / b_std if bias else 1.0
            if parameterization == "ntk" and bias and not 1e-30 <= ratio <= 1e30:
                direct[i] = ScaledBias(layer.out_features, b_std)
                self.layers[i] = layer = nn.Linear(fan_in, layer.out_features, bias=False)
            with torch.no_grad():
                layer.weight.normal_(0.0, 1.0)
                if layer.bias is not None:
                    layer.bias.normal_(0.0, 1.0)
                if i in direct:
                    direct[i].bias.normal_(0.0, 1.0)
                if parameterization == "standard":
                    layer.weight.mul_(w_factor)
                    if layer.bias is not None:
                        layer.bias.mul_(b_std)
            if parameterization == "standard":
                self.input_scales.append(1.0)
                self.output_scales.append(1.0)
            elif bias and i not in direct:  # σ_w/√d·W x + σ_b·b = σ_b·(W (x·σ_w/(σ_b √d)) + b)
                self.input_scales.append(ratio)
                self.output_scales.append(b_std)
            else:  # σ_w/√d·W x (+ σ_b·b by biases[i])
                self.input_scales.append(w_factor)
                self.output_scales.append(1.0)
        if direct:
            self.biases = nn.ModuleList(
                direct.get(i, nn.Identity()) for i in range(len(self.layers))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, ...) → (n, out_features)."""
        h = x.reshape(x.shape[0], -1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if self.input_scales[i] != 1.0:
                h = h * self.input_scales[i]
            h = layer(h)
            if self.output_scales[i] != 1.0:
                h = h * self.output_scales[i]
            if hasattr(self, "biases"):
                h = self.biases[i](h)
            if i < last:
                h = self.act(h)
        return h


class ScaledBias(nn.Module):
    """z + σ_b·b with b ~ N(0, 1): the NTK parameterisation's bias of a layer whose
    σ_w/(σ_b·√d) is too extreme to fold into the ``nn.Linear`` (see :class:`MLP`)."""

    def __init__(self, features: int, scale: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(features))
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.scale * self.bias


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """conv3×3 → norm → ReLU → conv3×3 → norm, plus the shortcut (identity, or a strided
    1×1 conv + norm when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm) -> None:
        super().__init__()
        plain = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=plain)
        self.norm1 = _norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=plain)
        self.norm2 = _norm_layer(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=plain), _norm_layer(norm, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCNN(nn.Module):
    """ResNet-style CNN: conv3×3 stem → stages of basic residual blocks (stage s has
    ``widths[s]`` channels, stride 2 at the start of every stage but the first) → global
    average pooling → linear head.

    Args:
        in_channels: C of the (n, C, H, W) inputs.
        num_classes: outputs k per sample.
        widths: channels per stage.
        blocks_per_stage: residual blocks per stage.
        norm: "batch" (BatchNorm2d; train-mode BatchNorm couples the samples of a batch, so
            NTK diagnostics and :func:`lplr_fast.train` need the model in eval mode),
            "group" (GroupNorm, per sample) or "none" (convs get biases instead).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        widths = list(widths)
        _check_positive_ints("in_channels", [in_channels])
        _check_positive_ints("num_classes", [num_classes])
        _check_positive_ints("blocks_per_stage", [blocks_per_stage])
        _check_positive_ints("widths", widths)
        if not widths:
            raise ValueError("widths must hold at least one stage width")
        _check_choice("norm", norm, ["batch", "group", "none"])
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=norm == "none")
        self.stem_norm = _norm_layer(norm, widths[0])
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for s, c_out in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, norm))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, C, H, W) → (n, num_classes)."""
        h = torch.relu(self.stem_norm(self.stem(x)))
        h = self.blocks(h)
        return self.head(h.mean(dim=(2, 3)))


__all__ = ["MLP", "BasicBlock", "Erf", "ResNetCNN"]
