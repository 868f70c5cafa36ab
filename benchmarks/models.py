"""Benchmark networks, defined once for PyTorch and exported as arrays so that
``nt_baseline.py`` (JAX, separate environment) rebuilds exactly the same function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class Erf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


ACTIVATIONS = {"tanh": nn.Tanh, "erf": Erf, "relu": nn.ReLU}


def mlp(widths: list[int], act: str = "tanh") -> nn.Sequential:
    """Linear layers with a nonlinearity between them, e.g. 784 → 2048 → 2048 → 2048 → 10.
    The model remembers ``act`` (``model.act``) so that :func:`export` records it."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[act]())
    model = nn.Sequential(*layers)
    model.act = act
    return model


class BasicBlock(nn.Module):
    """conv3×3 → ReLU → conv3×3, identity shortcut, ReLU (no BatchNorm: in eval mode it is
    a per-channel affine map, left out so that both frameworks run the same network)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class ResNetCNN(nn.Module):
    """ResNet-style CNN for 3×32×32 inputs: stem conv, block, strided conv, block, global
    average pool, linear head with k outputs."""

    def __init__(self, c: int = 16, k: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block1 = BasicBlock(c)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.block2 = BasicBlock(2 * c)
        self.head = nn.Linear(2 * c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1(torch.relu(self.stem(x)))
        h = self.block2(torch.relu(self.down(h)))
        return self.head(h.mean(dim=(2, 3)))


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions, a 2-layer Transformer encoder (dropout off), mean
    pooling, a linear head: (n, T) token ids → (n, k)."""

    def __init__(
        self, k: int = 10, vocab: int = 1000, dim: int = 128, heads: int = 4, layers: int = 2
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(0.02 * torch.randn(512, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, k)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tokens(idx) + self.positions[: idx.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


class LSTMModel(nn.Module):
    """Two-layer LSTM over (n, T, d) sequences; last hidden state and mean output → head."""

    def __init__(self, k: int = 10, d: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(2 * hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, _) = self.lstm(x)
        return self.head(torch.cat([h[-1], out.mean(dim=1)], dim=1))


def export(model: nn.Module, x: torch.Tensor, kind: str, path: Path) -> None:
    """Write the parameters (PyTorch layouts, float32) and inputs to ``path`` (.npz)."""
    arrays = {f"p:{name}": p.detach().cpu().float().numpy() for name, p in model.named_parameters()}
    arrays["x"] = x.detach().cpu().float().numpy()
    arrays["kind"] = np.array(kind)
    arrays["act"] = np.array(getattr(model, "act", "tanh"))
    np.savez(path, **arrays)
