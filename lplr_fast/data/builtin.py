"""Built-in datasets (generated, no download) and a loader for local files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def two_spirals(
    n: int = 256, *, noise: float = 0.05, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classic two-spirals regression set: x (n, 2) points on two interleaved spirals,
    y (n, 2) one-hot targets (±1 coding in {0, 1}). Deterministic for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    t = torch.sqrt(torch.rand(n, generator=gen, dtype=torch.float64)) * 3 * math.pi
    r = t / (3 * math.pi)
    angle = t + math.pi * label
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = torch.nn.functional.one_hot(label, 2).to(torch.float64)
    return x.to(dtype), y.to(dtype)


def load_dataset(
    path: str | Path, *, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load (x, y) from a local ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` file (last
    column is y, a header line is skipped when it is not numeric)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            missing = {"x", "y"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks arrays {sorted(missing)} (has {data.files})")
            x, y = data["x"], data["y"]
    elif path.suffix == ".csv":
        text = path.read_text().splitlines()
        try:
            float(text[0].split(",")[0])
            skip = 0
        except ValueError:
            skip = 1
        arr = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
        x, y = arr[:, :-1], arr[:, -1:]
    else:
        raise ValueError(f"unsupported dataset format {path.suffix!r}; use .npz or .csv")
    if len(x) != len(y):
        raise ValueError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=dtype)


def teacher_regression(
    n: int = 256, d: int = 16, k: int = 2, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x ~ N(0, I_d/d) (n, d) and targets y (n, k) from a fixed random two-layer tanh
    teacher; a well-posed over-parameterised regression set for NTK/PL studies."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    w1 = torch.randn(d, 64, generator=gen, dtype=torch.float64)
    w2 = torch.randn(64, k, generator=gen, dtype=torch.float64) / 8
    y = torch.tanh(x @ w1) @ w2
    return x.to(dtype), y.to(dtype)


DATASETS = {"teacher": teacher_regression, "spirals": two_spirals}
