"""Rigorous eigenvalue certificates for symmetric float64 matrices (arithmetic model and
Lemma S: ``rounding.py``). Callers pass matrices already scaled by a power of two into a
safe range (``bounds.prepare_matrix``) and add the scaling and asymmetry terms (``extra``).

Cholesky shift test (Rump, "Verification of positive definiteness", BIT 46:433–452, 2006,
Thm 2.3; formalised in Coq by P. Roux; without underflow Higham, *Accuracy and Stability
of Numerical Algorithms*, 2nd ed., Thm 10.3). Let B̃ be a symmetric n×n float64 matrix
with positive diagonal. If floating-point Cholesky of B̃ runs to completion (every computed
entry finite, positive pivots), then for every real x

    xᵀB̃x ≥ −|x|ᵀΔ|x|,   Δ_ij = α·d_i·d_j + 4η(n + 2 + max_k b̃_kk),
    d_j² = (b̃_jj + 2jη) / (1 − α),   α = γ_{j+2} ≤ γ_{n+1} (j counted from 0),

η the underflow unit of products and quotients (≤ TINY). The proof takes the dot products
in any order and needs only the model of ``rounding.py``. LAPACK's potf2 and many trsm
kernels multiply by a computed reciprocal 1/r_jj instead of dividing (one more rounding),
GEMM/FMA-based blocked variants round less, and a vendor square root or reciprocal that is
off by a few ulps costs a few more; taking α = γ_{n+8} leaves room for 7 roundings beyond
Rump's count. For ‖x‖₂ = 1, Cauchy–Schwarz gives (Σ d_j|x_j|)² ≤ Σ d_j² and (Σ|x_j|)² ≤ n,
so

    λ_min(B̃) ≥ −c,   c = α/(1 − α)·(tr B̃ + 2n²·TINY) + 8n·TINY·(n + 2 + max_k b̃_kk)

(the TINY terms doubled for safety). The test factorises B̃ = fl(L(±B) − sI), where L(M)
is the symmetric matrix holding M's lower triangle: off the diagonal B̃ equals L(±B), and
b̃_jj = fl(±b_jj − s) = (±b_jj − s)(1 + δ) (a difference: no underflow error), so
|b̃_jj − (±b_jj − s)| ≤ 2u·b̃_jj. Hence

    λ_min(L(±B)) ≥ s − c − 2u·max_k b̃_kk,

and with ``extra`` ≥ ‖sym(±A') − L(±B)‖₂ for the matrix A' the caller certifies (its
asymmetry ‖B − Bᵀ‖_F/2 and the rounding of the power-of-two scaling),
λ_min(sym(±A')) ≥ s − c − 2u·max_k b̃_kk − extra. Every step is rounded outward.

Rayleigh quotients give the other ends: λ_min(sym B) ≤ vᵀBv / vᵀv ≤ λ_max(sym B) for any
v ≠ 0 (vᵀBv = vᵀ sym(B) v exactly). ``rayleigh_bounds`` encloses the exact quotient of the
float vector v (scaled by a power of two so that 1/2 ≤ max|v_i| < 1): with w = fl(Bv) and
p = fl(vᵀw) in any summation order, Q = |v|ᵀ|B||v| and |v_i| ≤ 1,

    |w_i − (Bv)_i| ≤ γ_n(|B||v|)_i + 2n·TINY,   |p − vᵀw| ≤ γ_n|v|ᵀ|w| + 2n·TINY,
    |p − vᵀBv| ≤ (2γ_n + γ_n²)Q + 2n·TINY(2‖v‖₁ + 1) ≤ γ_{2n}·Q + 6n²·TINY,

Q bounded above by Lemma S (depth 2n + 1, 2n² + 2n products) and vᵀv ≥ 1/4 enclosed by
Lemma S (depth n, n products); the quotient is then taken in interval arithmetic with
outward rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .native import abs_quadratic
from .rounding import (
    TINY,
    UNIT_ROUNDOFF,
    down,
    gamma_up,
    scale_tensor,
    sum_lower,
    sum_upper,
    up,
)


@dataclass(frozen=True)
class ShiftTest:
    """Outcome of one Cholesky test of ±B − sI."""

    shift: float
    success: bool
    bound: float  # certified λ_min(sym(±A')) ≥ bound when success, else NaN
    margin: float  # shift − bound: the rounding allowance given away
    factor: torch.Tensor | None  # lower Cholesky factor when success


def _failed(shift: float) -> ShiftTest:
    return ShiftTest(shift, False, float("nan"), float("nan"), None)


def cholesky_margin(n: int, diag_sum: float, diag_max: float) -> float:
    """c + 2u·max b̃_kk of the module docstring for a factorised B̃ (n×n, positive diagonal
    with computed sum ``diag_sum`` and maximum ``diag_max``), rounded up."""
    trace = sum_upper(diag_sum, depth=n, ops=0)  # n positive floats, additions only
    alpha = gamma_up(n + 8)
    coef = up(alpha / down(1.0 - alpha))
    c = up(coef * up(trace + up(2.0 * n * n * TINY)))
    c = up(c + up(up(8.0 * n * TINY) * up(n + 2.0 + diag_max)))
    return up(c + up(2.0 * UNIT_ROUNDOFF * diag_max))


def cholesky_shift_test(
    b: torch.Tensor, shift: float, extra: float = 0.0, negate: bool = False
) -> ShiftTest:
    """Try Cholesky of ``L(±b) − shift·I`` (float64, lower triangle; ``negate`` picks −b). On
    success return the certified lower bound shift − c − 2u·max b̃_kk − ``extra`` on λ_min of
    sym(±A') (module docstring)."""
    n = b.shape[0]
    m = b.neg() if negate else b.clone()
    m.diagonal().sub_(shift)
    diag = m.diagonal()
    d_min, d_sum, d_max = torch.stack([diag.min(), diag.sum(), diag.max()]).tolist()
    if not d_min > 0.0:
        return _failed(shift)
    factor, info = torch.linalg.cholesky_ex(m)
    # every computed l_ij (i > j) enters l_ii = √(b̃_ii − Σ_k l_ik² ...) as a square, so a
    # non-finite entry anywhere in row i makes l_ii NaN: finite positive pivots suffice
    pivots = factor.diagonal()
    ok = (info == 0) & torch.isfinite(pivots).all() & (pivots > 0).all()
    if not bool(ok):
        return _failed(shift)
    margin = cholesky_margin(n, d_sum, d_max)
    bound = down(down(shift - margin) - extra)
    return ShiftTest(shift, True, bound, up(shift - bound), factor)


def rayleigh_bounds(b: torch.Tensor, v: torch.Tensor, negate: bool = False) -> tuple[float, float]:
    """Rigorous [lo, hi] around the exact Rayleigh quotient vᵀ(±B)v / vᵀv of the float64
    matrix ``b`` and a vector proportional to ``v`` (module docstring)."""
    n = b.shape[0]
    v = v.to(torch.float64)
    top = float(v.abs().max())
    if not top > 0.0 or top != top:
        raise ValueError("the Rayleigh quotient needs a non-zero finite vector")
    v = scale_tensor(v, -math.frexp(top)[1])  # any non-zero vector will do: no exactness needed
    w = b @ v
    p, vv = torch.stack([v @ w, v @ v]).tolist()
    q_abs = sum_upper(abs_quadratic(b, v), depth=2 * n + 1, ops=2 * n * n + 2 * n)
    err = up(up(gamma_up(2 * n) * q_abs) + up(6.0 * n * n * TINY))
    num_lo, num_hi = down(p - err), up(p + err)
    den_lo, den_hi = sum_lower(vv, depth=n, ops=n), sum_upper(vv, depth=n, ops=n)
    lo = down(num_lo / (den_hi if num_lo >= 0 else den_lo))
    hi = up(num_hi / (den_lo if num_hi >= 0 else den_hi))
    return (-hi, -lo) if negate else (lo, hi)


def cholesky_inverse_matvec(factor: torch.Tensor):
    """v ↦ (LLᵀ)⁻¹ v for a lower Cholesky factor L (two triangular solves)."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        y = torch.linalg.solve_triangular(factor, v.unsqueeze(1), upper=False)
        return torch.linalg.solve_triangular(factor.T, y, upper=True).squeeze(1)

    return apply
