"""Small models covering the layer rules: MLPs, CNNs, a residual net with BatchNorm (eval)
and LayerNorm, an embedding model, weight sharing, a Transformer encoder classifier and an
LSTM sequence model."""

from __future__ import annotations

import torch
from torch import nn


def mlp(act: type[nn.Module] = nn.Tanh, k: int = 3, bias: bool = True, d: int = 6) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d, 12, bias=bias),
        act(),
        nn.Linear(12, 10, bias=bias),
        act(),
        nn.Linear(10, k, bias=bias),
    )


class SmallCNN(nn.Module):
    """Strided, padded, dilated and grouped Conv2d plus a Conv1d branch."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=1, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.c3 = nn.Conv2d(6, 6, 2, stride=1, padding=0, dilation=2, bias=False)
        self.c1d = nn.Conv1d(2, 3, 3, stride=2, padding=1, groups=1)
        self.head = nn.Linear(6 + 3, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = torch.tanh(self.c2(h))
        h = torch.relu(self.c3(h)).mean(dim=(2, 3))
        s = torch.tanh(self.c1d(x.mean(dim=3))).mean(dim=2)
        return self.head(torch.cat([h, s], dim=1))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x  # in-place residual add, as torchvision does
        return torch.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, k: int = 3, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.block = Block(c)
        self.norm = nn.LayerNorm(c)
        self.fc = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(torch.relu(self.stem(x)))
        return self.fc(self.norm(h.mean(dim=(2, 3))))


class EmbeddingModel(nn.Module):
    def __init__(self, k: int = 3, vocab: int = 11, dim: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, k)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.emb(idx)).mean(dim=1))


class SharedLayer(nn.Module):
    """One Linear applied twice, and a GroupNorm used twice."""

    def __init__(self, k: int = 3, d: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(d, 8)
        self.shared = nn.Linear(8, 8)
        self.gn = nn.GroupNorm(2, 8)
        self.out = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.gn(self.shared(h)))
        h = torch.tanh(self.gn(self.shared(h)))
        return self.out(h)


class SequenceLinear(nn.Module):
    """Linear on (n, T, d) inputs: the spatial (ghost / materialise) route for Linear."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 7)
        self.fc = nn.Linear(7, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.proj(x)).mean(dim=1))


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions, a Transformer encoder (self-attention, MLP,
    LayerNorms; dropout off), mean pooling, a linear head: (n, T) token ids → (n, k)."""

    def __init__(
        self, k: int = 3, vocab: int = 11, dim: int = 8, heads: int = 2, layers: int = 2
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(0.1 * torch.randn(16, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, k)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tokens(idx) + self.positions[: idx.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


class LSTMModel(nn.Module):
    """Two-layer LSTM over (n, T, d) sequences, the last hidden state and the mean output
    through a linear head."""

    def __init__(self, k: int = 3, d: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(2 * hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, _) = self.lstm(x)
        return self.head(torch.cat([h[-1], out.mean(dim=1)], dim=1))


def seeded(builder, *args, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return builder(*args, **kwargs).double().eval()


def randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (eval-mode BN is then a real
    per-channel affine map)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
