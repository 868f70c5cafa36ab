"""Lanczos with full reorthogonalisation for the extreme eigenvalues of a symmetric operator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LanczosResult:
    """Extreme Ritz pairs. ``resid_*`` = ‖A y − θ y‖ for the unit Ritz vector y (the interval
    [θ − resid, θ + resid] holds *an* eigenvalue, not necessarily the extreme one)."""

    theta_min: float
    theta_max: float
    resid_min: float
    resid_max: float
    vec_min: torch.Tensor
    vec_max: torch.Tensor
    matvecs: int


def lanczos(
    matvec: MatVec,
    n: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    max_iter: int = 300,
    rtol: float = 1e-6,
    want_min: bool = False,
    start: torch.Tensor | None = None,
    seed: int = 0,
) -> LanczosResult:
    """Run Lanczos until the largest Ritz value (and, with ``want_min``, the smallest) has
    residual ≤ rtol·|θ|, or ``max_iter`` / n steps. Full reorthogonalisation (twice)."""
    if start is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        start = torch.randn(n, generator=gen, dtype=dtype).to(device)
    q = start.to(dtype) / start.norm()
    basis = torch.empty(min(n, max_iter) + 1, n, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    basis[0] = q
    steps = min(n, max_iter)
    evals = evecs = None
    for m in range(steps):
        w = matvec(basis[m])
        alpha = float(basis[m] @ w)
        alphas.append(alpha)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - basis[: m + 1].T @ (basis[: m + 1] @ w)
        beta = float(w.norm())
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(tri)
        res_max = abs(beta * float(evecs[-1, -1]))
        res_min = abs(beta * float(evecs[-1, 0]))
        done = res_max <= rtol * max(abs(float(evals[-1])), 1e-300)
        if want_min:
            done = done and res_min <= rtol * max(abs(float(evals[-1])), 1e-300)
        if done or m + 1 == steps or beta <= 1e-14 * max(abs(float(evals[-1])), 1e-300):
            break
        betas.append(beta)
        basis[m + 1] = w / beta
    assert evals is not None and evecs is not None
    size = len(alphas)
    v = basis[:size].T @ evecs.to(dtype=dtype, device=device)
    return LanczosResult(
        float(evals[0]), float(evals[-1]), res_min, res_max, v[:, 0], v[:, -1], size
    )
