"""The default job: the empirical NTK of an MLP on a built-in regression set (a fixed random
teacher by default), computed by
the structured engine and checked against the torch.func reference, with certified
eigenvalue brackets and the PL scale λ/n they imply."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ._backend import backend_info
from .data import DATASETS
from .ntk import empirical_ntk
from .spectrum import as_matrix, eig_bounds


@dataclass
class DemoConfig:
    n: int = 256
    width: int = 512
    depth: int = 2
    device: str = "cpu"
    seed: int = 0
    reference: bool = True
    dataset: str = "teacher"


def build_mlp(d_in: int, width: int, depth: int, k: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.Tanh()]
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers)


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def run_demo(cfg: DemoConfig) -> list[tuple[str, str]]:
    """Run the demo; returns (quantity, value) rows (also printed by the CLI)."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    x, y = DATASETS[cfg.dataset](cfg.n, seed=cfg.seed)
    x, y = x.to(device), y.to(device)
    model = build_mlp(x.shape[1], cfg.width, cfg.depth, y.shape[1]).double().to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    info = backend_info()
    rows = [
        (
            "backend",
            "compiled C++" + (" + CUDA" if info["cuda"] else "")
            if info["compiled"]
            else f"PyTorch fallback ({info['fallback_reason']})",
        ),
        ("dataset", f"{cfg.dataset}, n={cfg.n}, d={x.shape[1]}, k={y.shape[1]} outputs"),
        ("model", f"MLP {x.shape[1]}→{cfg.width}×{cfg.depth}→{y.shape[1]} (tanh), P={params:,}"),
    ]
    kernel, t_fast = _timed(lambda: empirical_ntk(model, x))
    rows.append(("NTK shape / time (structured)", f"{tuple(kernel.shape)} / {t_fast * 1e3:.1f} ms"))
    if cfg.reference:
        ref, t_ref = _timed(lambda: empirical_ntk(model, x, implementation="jacobian"))
        err = float((kernel - ref).norm() / ref.norm())
        rows.append(
            ("torch.func jacobian time", f"{t_ref * 1e3:.1f} ms ({t_ref / t_fast:.1f}× slower)")
        )
        rows.append(("relative error vs reference", f"{err:.2e}"))
    mat = as_matrix(kernel)
    rows.append(("symmetric", str(bool(torch.equal(mat, mat.T)))))
    bounds, t_b = _timed(lambda: eig_bounds(mat.cpu()))
    n = cfg.n
    rows += [
        (
            "λ_min(Θ) bracket",
            f"[{bounds.lambda_min_lower:.6e}, {bounds.lambda_min_upper:.6e}]"
            f" ({'certified' if bounds.certified_min else 'estimate'})",
        ),
        (
            "λ_max(Θ) bracket",
            f"[{bounds.lambda_max_lower:.6e}, {bounds.lambda_max_upper:.6e}]"
            f" ({'certified' if bounds.certified_max else 'estimate'})",
        ),
        ("PL constant μ = λ_min/n ≥", f"{bounds.lambda_min_lower / n:.6e}"),
        ("smoothness β ≈ λ_max/n ≤", f"{bounds.lambda_max_upper / n:.6e}"),
        (
            "condition number ≤",
            f"{bounds.lambda_max_upper / bounds.lambda_min_lower:.4g}"
            if bounds.lambda_min_lower > 0
            else "unbounded (λ_min not certified > 0)",
        ),
        ("bounds time", f"{t_b * 1e3:.1f} ms ({bounds.method})"),
    ]
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
