"""Certified brackets for the extreme eigenvalues of a symmetric matrix (an NTK).

``eig_bounds`` returns [λ_min_lower, λ_min_upper] and [λ_max_lower, λ_max_upper]:

* "dense": float64 ``eigvalsh`` estimates, then rigorous certificates (certify.py): a Cholesky
  shift test of A − sI just below λ_min proves the lower end; inverse iteration with that
  factor gives a vector whose Rayleigh quotient, with its rounding error, is the upper end.
  λ_max is bracketed the same way on −A.
* "cholesky": the same certificates started from a Lanczos estimate instead of ``eigvalsh``
  (no dense eigensolver; the shift is lowered until a Cholesky test succeeds).
* "lanczos": matrix-free; λ_max ∈ [θ_max, θ_max + ‖r‖] and λ_min ≤ θ_min from Ritz values
  with residuals. Not certified: a Ritz residual interval holds *an* eigenvalue, not
  necessarily the extreme one, and no factorisation proves a lower bound. λ_min_lower is 0
  for an operator that declares itself PSD (Θ = JJᵀ), −inf otherwise.
* "auto": "dense" when the matrix is stored and n ≤ 12 000, "lanczos" otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import torch

from .certify import ShiftTest, cholesky_shift_test, gamma, inverse_iteration, rayleigh_bounds
from .lanczos import lanczos

Method = Literal["auto", "dense", "cholesky", "lanczos"]
DENSE_LIMIT = 12_000


class SymmetricOperator(Protocol):
    """What ``eig_bounds`` needs of a matrix-free operator."""

    shape: tuple[int, int]

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SpectrumBounds:
    """Brackets on λ_min and λ_max. ``certified_*`` says the bracket is rigorous for the
    matrix as given (float64 rounding accounted for); ``margin_*`` is the rounding margin δ
    that the certificate had to give away."""

    lambda_min_lower: float
    lambda_min_upper: float
    lambda_max_lower: float
    lambda_max_upper: float
    certified_min: bool
    certified_max: bool
    method: str
    matvecs: int
    seconds: float
    n: int
    margin_min: float = float("nan")
    margin_max: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        tag_min = "certified" if self.certified_min else "estimate"
        tag_max = "certified" if self.certified_max else "estimate"
        return (
            f"n={self.n} λ_min ∈ [{self.lambda_min_lower:.6g}, {self.lambda_min_upper:.6g}] "
            f"({tag_min}), λ_max ∈ [{self.lambda_max_lower:.6g}, "
            f"{self.lambda_max_upper:.6g}] ({tag_max}); {self.method}, "
            f"{self.matvecs} matvecs, {self.seconds:.3g} s"
        )


def as_matrix(k: torch.Tensor) -> torch.Tensor:
    """A square matrix from a square tensor or an (n, n, k, k) NTK (sample-major order)."""
    if k.dim() == 4:
        n1, n2, a, b = k.shape
        if n1 != n2 or a != b:
            raise ValueError(f"an NTK tensor must have shape (n, n, k, k), got {tuple(k.shape)}")
        return k.permute(0, 2, 1, 3).reshape(n1 * a, n2 * b)
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(
            f"K must be a square matrix or an (n, n, k, k) NTK, got shape {tuple(k.shape)}"
        )
    return k


def _validate(a: torch.Tensor) -> float:
    """Checks a stored matrix; returns ‖A − Aᵀ‖_F / 2 (0 for exactly symmetric input)."""
    if a.is_complex():
        raise TypeError("K must be real; complex Hermitian matrices are not supported")
    if not a.is_floating_point():
        raise TypeError(f"K must be a floating-point tensor, got {a.dtype}")
    if a.numel() == 0:
        raise ValueError("K is empty")
    if not bool(torch.isfinite(a).all()):
        raise ValueError("K contains NaN or Inf")
    a64 = a.double()
    asym = float((a64 - a64.T).norm()) / 2
    scale = float(a64.norm())
    tol = 100 * a.shape[0] * torch.finfo(a.dtype).eps * scale
    if asym > tol:
        raise ValueError(
            f"K is not symmetric: ‖K − Kᵀ‖_F / 2 = {asym:.3g} exceeds the rounding "
            f"tolerance {tol:.3g} (‖K‖_F = {scale:.3g})"
        )
    return asym


def _gershgorin_lower(a: torch.Tensor) -> float:
    off = a.abs().sum(dim=1) - a.diagonal().abs()
    return float((a.diagonal() - off).min())


def bracket_min(
    a: torch.Tensor, estimate: float, asym: float, rtol: float, gen: torch.Generator
) -> tuple[float, float, float]:
    """Certified [lower, upper] on λ_min(sym(a)) for float64 ``a``, searching the Cholesky
    shift downward from ``estimate``. Returns (lower, upper, margin), margin being the total
    rounding allowance of the two certificates (Cholesky δ + Rayleigh-quotient error)."""
    n = a.shape[0]
    scale = max(float(a.diagonal().abs().max()), float(a.abs().max()), 1e-300)
    base_margin = gamma(n + 1) * max(float(a.diagonal().abs().sum()), scale) + asym
    gap = max(4 * base_margin, rtol * abs(estimate) / 4, 1e-300)
    floor = _gershgorin_lower(a) - 4 * base_margin - abs(_gershgorin_lower(a)) * 1e-12
    upper = math.inf
    start = torch.randn(n, generator=gen, dtype=torch.float64).to(a.device)
    best: ShiftTest | None = None
    for _ in range(80):
        shift = max(estimate - gap, floor)
        test = cholesky_shift_test(a, shift, asym)
        if test.success:
            assert test.factor is not None
            if best is None or test.bound > best.bound:
                best = test
            v = inverse_iteration(test.factor, start, steps=3)
            rq_lo, rq_hi = rayleigh_bounds(a, v)
            upper = min(upper, rq_hi)
            rounding = best.margin + (rq_hi - rq_lo) / 2
            width = upper - best.bound
            if width <= rtol * abs(upper) or width <= 8 * rounding or gap <= base_margin:
                break
            estimate, gap = rq_lo, max(2 * test.margin, rtol * abs(rq_lo) / 4)
        else:
            if shift <= floor:
                raise RuntimeError("Cholesky failed even at the Gershgorin lower bound")
            gap *= 4
    if best is None:
        raise RuntimeError("no Cholesky shift test succeeded")
    return best.bound, upper, rounding


def eig_bounds(
    K: torch.Tensor | SymmetricOperator,
    *,
    which: tuple[str, ...] = ("min", "max"),
    method: Method = "auto",
    rtol: float = 1e-6,
    certify: bool = True,
    seed: int = 0,
) -> SpectrumBounds:
    """Bracket the extreme eigenvalues of a symmetric matrix.

    Args:
        K: a square symmetric tensor, an (n, n, k, k) NTK from ``empirical_ntk`` (read as
            the (n·k)×(n·k) matrix in sample-major order), or an operator with ``shape`` and
            ``matvec`` (optionally ``psd = True``).
        which: the ends wanted, a subset of ("min", "max"); the other end is reported as
            [-inf, inf] and costs nothing.
        method: "auto", "dense", "cholesky" or "lanczos" (see module docstring).
        rtol: target relative width of each bracket (the rounding margin may force more).
        certify: with False, "dense" returns the eigvalsh values as both ends (uncertified).

    Returns:
        A :class:`SpectrumBounds`.
    """
    t0 = time.perf_counter()
    bad = set(which) - {"min", "max"}
    if bad or not which:
        raise ValueError(f"which must be a non-empty subset of ('min', 'max'), got {which}")
    if method not in ("auto", "dense", "cholesky", "lanczos"):
        raise ValueError(f"unknown method {method!r}")
    if not isinstance(K, torch.Tensor):
        if method not in ("auto", "lanczos"):
            raise ValueError(f"method={method!r} needs a stored matrix; operators use 'lanczos'")
        return _lanczos_bounds(K, None, which, rtol, seed, t0, psd=bool(getattr(K, "psd", False)))
    a = as_matrix(K)
    asym = _validate(a)
    n = a.shape[0]
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "lanczos"
    a64 = a.double()
    if method == "lanczos":
        return _lanczos_bounds(None, a64, which, rtol, seed, t0, psd=False)
    gen = torch.Generator().manual_seed(seed)
    matvecs = 0
    if method == "dense":
        evals = torch.linalg.eigvalsh(a64 if asym == 0 else (a64 + a64.T) / 2)
        est_min, est_max = float(evals[0]), float(evals[-1])
        if not certify:
            return SpectrumBounds(
                est_min,
                est_min,
                est_max,
                est_max,
                False,
                False,
                "dense",
                0,
                time.perf_counter() - t0,
                n,
            )
    else:
        lz = lanczos(
            lambda v: a64 @ v,
            n,
            rtol=rtol,
            want_min="min" in which,
            seed=seed,
            max_iter=min(n, 200),
        )
        est_min, est_max, matvecs = lz.theta_min, lz.theta_max, lz.matvecs
    lo_min, hi_min, lo_max, hi_max = -math.inf, math.inf, -math.inf, math.inf
    m_min = m_max = math.nan
    if "min" in which:
        lo_min, hi_min, m_min = bracket_min(a64, est_min, asym, rtol, gen)
    if "max" in which:
        lo, hi, m_max = bracket_min(-a64, -est_max, asym, rtol, gen)
        lo_max, hi_max = -hi, -lo
    return SpectrumBounds(
        lo_min,
        hi_min,
        lo_max,
        hi_max,
        "min" in which,
        "max" in which,
        method,
        matvecs,
        time.perf_counter() - t0,
        n,
        m_min,
        m_max,
    )


def _lanczos_bounds(
    op: SymmetricOperator | None,
    a64: torch.Tensor | None,
    which,
    rtol: float,
    seed: int,
    t0: float,
    psd: bool,
) -> SpectrumBounds:
    if op is not None:
        n = int(op.shape[0])
        probe = op.matvec(torch.zeros(n, dtype=torch.float64))
        matvec, dtype, device = op.matvec, probe.dtype, probe.device
    else:
        assert a64 is not None
        n, dtype, device = a64.shape[0], a64.dtype, a64.device

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return a64 @ v

    lz = lanczos(
        matvec, n, dtype=dtype, device=device, rtol=rtol, want_min="min" in which, seed=seed
    )
    lo_min = 0.0 if psd else -math.inf
    hi_min = lz.theta_min if "min" in which else math.inf
    if "max" in which:
        lo_max, hi_max = lz.theta_max, lz.theta_max + lz.resid_max
    else:
        lo_max, hi_max = -math.inf, math.inf
    if a64 is not None and "min" in which:  # stored matrix: make the Ritz end rigorous
        hi_min = rayleigh_bounds(a64, lz.vec_min)[1]
    if a64 is not None and "max" in which:
        lo_max = rayleigh_bounds(a64, lz.vec_max)[0]
    return SpectrumBounds(
        lo_min,
        hi_min,
        lo_max,
        hi_max,
        False,
        False,
        "lanczos",
        lz.matvecs,
        time.perf_counter() - t0,
        n,
    )
