"""Certified brackets for the extreme eigenvalues of a symmetric matrix (an NTK).

``eig_bounds`` returns [λ_min_lower, λ_min_upper] and [λ_max_lower, λ_max_upper]:

* "dense": float64 ``eigvalsh`` estimates, then rigorous certificates (certify.py): a Cholesky
  shift test of A − sI just below λ_min proves the lower end; inverse iteration with that
  factor gives a vector whose Rayleigh quotient, with its rounding error, is the upper end.
  λ_max is bracketed the same way on −A.
* "cholesky": the same certificates without a dense eigensolver: λ_max is estimated by
  Lanczos (symmetric matvecs reading one triangle), λ_min by Lanczos on (A − s₀I)⁻¹ through
  the factor of a first Cholesky test at s₀ just below 0 (that test already proves
  λ_min > s₀ − δ); the shift is then raised to just below the estimate and lowered until a
  test succeeds. About 3 Cholesky factorisations in all: cheaper than ``eigvalsh``.
* "lanczos": matrix-free; λ_max ∈ [θ_max, θ_max + ‖r‖] and λ_min ≤ θ_min from Ritz values
  with residuals. Not certified: a Ritz residual interval holds *an* eigenvalue, not
  necessarily the extreme one, and no factorisation proves a lower bound. λ_min_lower is 0
  for an operator that declares itself PSD (Θ = JJᵀ), −inf otherwise.
* "auto": "cholesky" when the matrix is stored and n ≤ 12 000, "lanczos" otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import torch

from .certify import (
    ShiftTest,
    cholesky_inverse_matvec,
    cholesky_shift_test,
    gamma,
    rayleigh_bounds,
)
from .lanczos import lanczos
from .native import SquareStats, square_stats, symv_upper

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


def _validate(a: torch.Tensor) -> SquareStats:
    """Checks a stored matrix in one pass; returns its reductions (asymmetry ‖A − Aᵀ‖_F,
    Gershgorin radii, ...)."""
    if a.is_complex():
        raise TypeError("K must be real; complex Hermitian matrices are not supported")
    if not a.is_floating_point():
        raise TypeError(f"K must be a floating-point tensor, got {a.dtype}")
    if a.numel() == 0:
        raise ValueError("K is empty")
    stats = square_stats(a)
    if stats.nonfinite:
        raise ValueError(f"K contains {stats.nonfinite} NaN or Inf entries")
    tol = 200 * a.shape[0] * torch.finfo(a.dtype).eps * stats.fro
    if stats.asym_fro > tol:
        raise ValueError(
            f"K is not symmetric: ‖K − Kᵀ‖_F = {stats.asym_fro:.3g} exceeds the rounding "
            f"tolerance {tol:.3g} (‖K‖_F = {stats.fro:.3g})"
        )
    return stats


def _gershgorin(a: torch.Tensor, stats: SquareStats) -> tuple[float, float]:
    diag = a.diagonal().double().cpu()
    return float((diag - stats.row_abs).min()), float((diag + stats.row_abs).max())


def _rounding_scale(n: int, stats: SquareStats) -> float:
    """γ_{n+1} · max(|tr A|, max |a_ij|): the size of one Cholesky certificate's margin."""
    return gamma(n + 1) * max(abs(stats.trace), stats.max_abs, 1e-300)


def bracket_min(
    a: torch.Tensor,
    estimate: float,
    asym: float,
    rtol: float,
    seed: int,
    stats: SquareStats,
    negate: bool = False,
    prior: ShiftTest | None = None,
) -> tuple[float, float, float, int]:
    """Certified [lower, upper] on λ_min of sym(±a) for float64 ``a`` (``negate`` brackets
    λ_min(−a) = −λ_max(a)).

    Every successful Cholesky test of ±a − sI proves λ_min > s − δ; its factor drives a short
    shift-and-invert Lanczos run whose Ritz vector gives a rigorous Rayleigh-quotient upper
    end and an estimate for the next, higher shift (failed tests step back towards the last
    success). ``estimate`` seeds the first shift unless ``prior`` (an already successful test)
    is given. Returns (lower, upper, margin, solves): margin is the rounding allowance of the
    two certificates (Cholesky δ + Rayleigh-quotient error), solves the number of
    triangular-solve pairs used."""
    n = a.shape[0]
    base_margin = _rounding_scale(n, stats) + asym / 2
    g_lo, g_hi = _gershgorin(a, stats)
    floor_raw = -g_hi if negate else g_lo
    floor = floor_raw - 4 * base_margin - abs(floor_raw) * 1e-12
    gap = max(4 * base_margin, rtol * abs(estimate) / 4, 1e-300)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(n, generator=gen, dtype=torch.float64).to(a.device)
    best, upper, rounding, solves = None, math.inf, math.nan, 0
    failed_at = math.inf
    shift: float | None = None if prior is not None else max(estimate - gap, floor)
    pending = prior
    for _ in range(60):
        if pending is not None:
            test, pending = pending, None
        else:
            assert shift is not None
            test = cholesky_shift_test(a, shift, asym / 2, negate)
        if not test.success:
            failed_at = min(failed_at, test.shift)
            if test.shift <= floor:
                raise RuntimeError("Cholesky failed even at the Gershgorin lower bound")
            if best is None:
                gap *= 4
                shift = max(estimate - gap, floor)
            elif test.shift - best.shift > base_margin:
                shift = 0.5 * (test.shift + best.shift)
            else:
                break
            continue
        assert test.factor is not None
        if best is None or test.bound > best.bound:
            best = test
        lz = lanczos(
            cholesky_inverse_matvec(test.factor), n, rtol=rtol / 8, max_iter=min(n, 80), start=start
        )
        solves += lz.matvecs
        start = lz.vec_max
        rq_lo, rq_hi = rayleigh_bounds(a, lz.vec_max, negate)
        upper = min(upper, rq_hi)
        rounding = best.margin + (rq_hi - rq_lo) / 2
        width = upper - best.bound
        if width <= rtol * abs(upper) or width <= 8 * rounding:
            break
        # λ_min ≈ s + 1/θ from above; s + 1/(θ + residual) is a likely value below it.
        likely = test.shift + 1.0 / (lz.theta_max + lz.resid_max)
        shift = likely - max(2 * test.margin, rtol * abs(upper) / 8)
        if shift >= failed_at:
            shift = 0.5 * (best.shift + failed_at)
        if shift - best.shift <= base_margin:
            break
    if best is None:
        raise RuntimeError("no Cholesky shift test succeeded")
    return best.bound, upper, rounding, solves


def _first_min_test(a: torch.Tensor, stats: SquareStats, asym: float) -> ShiftTest | None:
    """A Cholesky test at s₀ a few rounding margins below 0: succeeds for any PSD matrix (an
    NTK), proving λ_min > s₀ − δ and providing the factor for shift-and-invert Lanczos."""
    n = a.shape[0]
    s0 = -16 * _rounding_scale(n, stats) - asym
    test = cholesky_shift_test(a, s0, asym / 2)
    return test if test.success else None


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
            ``matvec`` (optionally ``psd = True``), e.g. :class:`lplr_fast.NTKOperator`.
        which: the ends wanted, a subset of ("min", "max"); the other end is reported as
            [-inf, inf] and costs nothing.
        method: "auto", "dense", "cholesky" or "lanczos" (see module docstring).
        rtol: target relative width of each bracket (the rounding margin may force more).
        certify: with False, "dense" (and "auto" on stored matrices) returns the eigvalsh
            values as both ends, labelled uncertified.
        seed: seeds the random start vectors (results are reproducible).

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
    stats = _validate(a)
    asym = stats.asym_fro
    n = a.shape[0]
    if method == "auto":
        stored = "cholesky" if certify else "dense"
        method = "lanczos" if n > DENSE_LIMIT else stored
    a64 = a.double()
    if method == "lanczos":
        return _lanczos_bounds(None, a64, which, rtol, seed, t0, psd=False)
    if stats.max_abs == 0.0:  # the zero matrix: every eigenvalue is exactly 0
        lo_min, hi_min = (0.0, 0.0) if "min" in which else (-math.inf, math.inf)
        lo_max, hi_max = (0.0, 0.0) if "max" in which else (-math.inf, math.inf)
        return SpectrumBounds(
            lo_min, hi_min, lo_max, hi_max, "min" in which, "max" in which, method, 0,
            time.perf_counter() - t0, n, 0.0, 0.0,
        )  # fmt: skip
    matvecs = 0
    prior: ShiftTest | None = None
    est_min = est_max = math.nan
    if method == "dense":
        evals = torch.linalg.eigvalsh(a64 if asym == 0 else (a64 + a64.T) / 2)
        est_min, est_max = float(evals[0]), float(evals[-1])
        if not certify:
            return SpectrumBounds(
                est_min, est_min, est_max, est_max, False, False, "dense", 0,
                time.perf_counter() - t0, n,
            )  # fmt: skip
    else:
        if "max" in which:
            lz = lanczos(
                lambda v: symv_upper(a64, v), n, rtol=rtol / 8, seed=seed, max_iter=min(n, 200)
            )
            est_max, matvecs = lz.theta_max, lz.matvecs
        if "min" in which:
            prior = _first_min_test(a64, stats, asym)
            if prior is None:  # indefinite: Ritz estimate from Lanczos on A itself
                lz = lanczos(
                    lambda v: symv_upper(a64, v), n, rtol=rtol, want_min=True, seed=seed,
                    max_iter=min(n, 200),
                )  # fmt: skip
                est_min = lz.theta_min
                matvecs += lz.matvecs
    lo_min, hi_min, lo_max, hi_max = -math.inf, math.inf, -math.inf, math.inf
    m_min = m_max = math.nan
    if "min" in which:
        lo_min, hi_min, m_min, solves = bracket_min(
            a64, est_min, asym, rtol, seed, stats, False, prior
        )
        matvecs += solves
    if "max" in which:
        lo, hi, m_max, solves = bracket_min(a64, -est_max, asym, rtol, seed + 1, stats, True)
        lo_max, hi_max = -hi, -lo
        matvecs += solves
    return SpectrumBounds(
        lo_min, hi_min, lo_max, hi_max, "min" in which, "max" in which, method, matvecs,
        time.perf_counter() - t0, n, m_min, m_max,
    )  # fmt: skip


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
        matvec = op.matvec
        dtype = getattr(op, "dtype", torch.float64)
        device = getattr(op, "device", torch.device("cpu"))
    else:
        assert a64 is not None
        n, dtype, device = a64.shape[0], a64.dtype, a64.device

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return symv_upper(a64, v)

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
        lo_min, hi_min, lo_max, hi_max, False, False, "lanczos", lz.matvecs,
        time.perf_counter() - t0, n,
    )  # fmt: skip
