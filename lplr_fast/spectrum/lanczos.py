"""Lanczos with full reorthogonalisation for the extreme eigenvalues of a symmetric operator.

Scale-safe: the Lanczos vectors are normalised with overflow-free norms and the tridiagonal
matrix is scaled by a power of two before its eigensolve, so the Ritz values are right for
operators of any magnitude whose products stay finite (a non-finite product is an error).
One host synchronisation per step (α and β together). The start vector comes from a CPU
generator seeded with ``seed`` and is moved to the operator's device: the same start on
every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .rounding import safe_norm

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


def start_vector(
    n: int, seed: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The seeded Gaussian start vector (generated on the CPU, then moved to ``device``)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _tridiagonal_eigh(alphas: list[float], betas: list[float]):
    """Eigenpairs of the Lanczos tridiagonal matrix, scaled by a power of two first."""
    top = max(max(abs(a) for a in alphas), max((abs(b) for b in betas), default=0.0))
    e = 0 if top == 0.0 else -math.frexp(top)[1]
    tri = torch.diag(torch.tensor([math.ldexp(a, e) for a in alphas], dtype=torch.float64))
    if betas:
        off = torch.tensor([math.ldexp(b, e) for b in betas], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(tri)
    return [math.ldexp(x, -e) for x in evals.tolist()], evecs


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
    residual ≤ rtol·max|θ|, or ``max_iter`` / n steps. Full reorthogonalisation (twice).

    Raises:
        ValueError: the operator returned NaN/Inf (e.g. its products overflow float range).
    """
    if start is None:
        start = start_vector(n, seed, dtype, device)
    q = start.to(dtype)
    q = q / safe_norm(q)
    steps = min(n, max_iter)
    basis = torch.empty(steps + 1, n, dtype=dtype, device=q.device)
    basis[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    evals: list[float] = []
    evecs = None
    res_min = res_max = 0.0
    for m in range(steps):
        w = matvec(basis[m])
        if tuple(w.shape) != (n,):
            raise ValueError(f"matvec returned shape {tuple(w.shape)}, expected ({n},)")
        w = w.to(dtype)
        alpha_t = basis[m] @ w
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - basis[: m + 1].T @ (basis[: m + 1] @ w)
        alpha, beta = torch.stack([alpha_t, safe_norm(w)]).tolist()  # one synchronisation
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(
                f"the operator's product {m + 1} is not finite (NaN/Inf): its entries or "
                "norm exceed the float range; scale it by a power of two"
            )
        alphas.append(alpha)
        evals, evecs = _tridiagonal_eigh(alphas, betas)
        res_max = abs(beta * float(evecs[-1, -1]))
        res_min = abs(beta * float(evecs[-1, 0]))
        size = max(abs(evals[0]), abs(evals[-1]))
        done = res_max <= rtol * size
        if want_min:
            done = done and res_min <= rtol * size
        if done or m + 1 == steps or beta <= 1e-14 * size:
            break
        betas.append(beta)
        basis[m + 1] = w / beta
    assert evecs is not None
    size = len(alphas)
    v = basis[:size].T @ evecs.to(dtype=dtype, device=basis.device)
    return LanczosResult(evals[0], evals[-1], res_min, res_max, v[:, 0], v[:, -1], size)
