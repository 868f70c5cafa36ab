"""Rigorous eigenvalue certificates for symmetric matrices in float64.

Cholesky shift test (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
Thm 10.3; the same argument as Demmel 1989 and Rump, "Verification of positive definiteness",
BIT 46, 2006): if floating-point Cholesky of a symmetric n×n matrix B (positive diagonal, no
underflow) runs to completion with factor R̂, then R̂ᵀR̂ = B + ΔB with
|ΔB| ≤ γ_{n+1}|R̂ᵀ||R̂|, γ_m = m·u/(1 − m·u), u = 2⁻⁵³. Hence

    ‖ΔB‖₂ ≤ γ_{n+1}‖R̂‖_F² = γ_{n+1} tr(R̂ᵀR̂) ≤ γ_{n+1}/(1 − γ_{n+1}) · tr(B) =: δ(B),

and because R̂ᵀR̂ ⪰ 0, λ_min(B) ≥ −δ(B). Applied to B = fl(A − sI) (whose diagonal carries
at most u·|a_ii − s| rounding, added to the margin) this proves

    λ_min(A) > s − δ(A − sI) − u·max_i |a_ii − s|.

The bound holds for any summation order of the inner products (blocked LAPACK potrf with
ordinary GEMMs included; not for Strassen-like fast products). The margin is evaluated with a
(1 + 8nu) safety factor against its own rounding. For a non-symmetric input the certificate
is for its symmetric part: the lower triangle is factorised, and ‖A − Aᵀ‖_F / 2 is subtracted.

Rayleigh quotients give the other ends: λ_min ≤ vᵀAv / vᵀv ≤ λ_max for any v ≠ 0; computed in
floating point their error is at most 3γ_{n+1}·|v|ᵀ|A||v| / vᵀv, which is added (or
subtracted) to keep those ends rigorous too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .native import abs_quadratic

UNIT_ROUNDOFF = 2.0**-53


def gamma(m: int) -> float:
    mu = m * UNIT_ROUNDOFF
    if mu >= 1.0:
        raise ValueError(f"matrix too large for the float64 rounding bound (m = {m})")
    return mu / (1.0 - mu)


def _safety(n: int) -> float:
    return 1.0 + 8.0 * (n + 2) * UNIT_ROUNDOFF


@dataclass(frozen=True)
class ShiftTest:
    """Outcome of one Cholesky test of A − sI."""

    shift: float
    success: bool
    bound: float  # certified λ_min(A) > bound when success, else NaN
    margin: float  # the rounding margin δ used
    factor: torch.Tensor | None  # lower Cholesky factor when success


def cholesky_shift_test(
    a: torch.Tensor, shift: float, asymmetry: float = 0.0, negate: bool = False
) -> ShiftTest:
    """Try Cholesky of ``±a − shift·I`` (float64, lower triangle; ``negate`` picks −a). On
    success return the certified lower bound on λ_min of the symmetric part of ±a (see the
    module docstring)."""
    n = a.shape[0]
    b = a.neg() if negate else a.clone()
    b.diagonal().sub_(shift)
    diag = b.diagonal()
    if bool((diag <= 0).any()):
        return ShiftTest(shift, False, float("nan"), float("nan"), None)
    factor, info = torch.linalg.cholesky_ex(b)
    if int(info) != 0 or not bool(torch.isfinite(factor.diagonal()).all()):
        return ShiftTest(shift, False, float("nan"), float("nan"), None)
    g = gamma(n + 1)
    trace = float(diag.sum())
    diag_rounding = UNIT_ROUNDOFF * float(diag.abs().max())
    margin = (g / (1.0 - g) * trace + diag_rounding + asymmetry) * _safety(n)
    return ShiftTest(shift, True, shift - margin, margin, factor)


def rayleigh_bounds(a: torch.Tensor, v: torch.Tensor, negate: bool = False) -> tuple[float, float]:
    """Rigorous interval [lo, hi] containing the exact Rayleigh quotient vᵀ(±A)v / vᵀv (its
    half-width is the rounding allowance 3γ_{n+1}|v|ᵀ|A||v| / vᵀv, slightly inflated)."""
    n = a.shape[0]
    av = a @ v
    vv = float(v @ v)
    q = float(v @ av) / vv
    if negate:
        q = -q
    err = 3.0 * gamma(n + 1) * abs_quadratic(a, v) / vv
    err = err * _safety(n) + abs(q) * 4 * UNIT_ROUNDOFF
    return q - err, q + err


def cholesky_inverse_matvec(factor: torch.Tensor):
    """v ↦ (LLᵀ)⁻¹ v for a lower Cholesky factor L (two triangular solves)."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        y = torch.linalg.solve_triangular(factor, v.unsqueeze(1), upper=False)
        return torch.linalg.solve_triangular(factor.T, y, upper=True).squeeze(1)

    return apply


def inverse_iteration(factor: torch.Tensor, start: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """A few steps of inverse iteration with a Cholesky factor L of (A − sI) = LLᵀ: converges
    to the eigenvector of the eigenvalue nearest s (fast, since s is close)."""
    solve = cholesky_inverse_matvec(factor)
    v = start / start.norm()
    for _ in range(steps):
        v = solve(v)
        v = v / v.norm()
    return v
