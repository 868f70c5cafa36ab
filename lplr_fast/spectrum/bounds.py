"""Certified brackets for the extreme eigenvalues of a symmetric matrix (an NTK).

``eig_bounds`` returns [λ_min_lower, λ_min_upper] and [λ_max_lower, λ_max_upper]:

* "dense": float64 ``eigvalsh`` estimates, then rigorous certificates (certify.py): a Cholesky
  shift test of A − sI just below λ_min proves the lower end; a short shift-and-invert
  Lanczos run with that factor gives a vector whose Rayleigh quotient, with its rounding
  error, is the upper end. λ_max is bracketed the same way on −A.
* "cholesky": the same certificates without a dense eigensolver: λ_max is estimated by
  Lanczos (symmetric matvecs reading one triangle), λ_min by Lanczos on (A − s₀I)⁻¹ through
  the factor of a first Cholesky test at s₀ just below 0 (that test already proves
  λ_min > s₀ − δ); the shift is then raised to just below the estimate and lowered until a
  test succeeds. About 3 Cholesky factorisations in all: cheaper than ``eigvalsh``.
* "lanczos": matrix-free; λ_max ∈ [θ_max, θ_max + ‖r‖] and λ_min ≤ θ_min from Ritz values
  with residuals. Not certified: a Ritz residual interval holds *an* eigenvalue, not
  necessarily the extreme one, and no factorisation proves a lower bound. λ_min_lower is 0
  for an operator that declares itself PSD (Θ = JJᵀ), −inf otherwise. On a stored matrix
  λ_min_upper and λ_max_lower are rigorous Rayleigh quotients all the same.
* "auto": "dense" for stored matrices up to n = 256 (one eigvalsh is cheaper there than the
  Lanczos runs), "cholesky" when the matrix is stored and small enough to factor (n ≤ 12 000 on
  the CPU, where time is the limit; on a GPU while four float64 n × n matrices take at most
  half of the device's memory: n ≈ 46 000 on a 141 GB card), "lanczos" otherwise.

Scale: a stored matrix whose largest entry lies outside [2^-256, 2^256) is multiplied by a
power of two 2^e (into [1/2, 1)) before anything else; every certificate is computed for
the scaled matrix B and mapped back by 2^-e with outward rounding. Scaling up is exact;
scaling down may round entries that become subnormal, by at most 2⁻¹⁰⁷⁴ each, which adds
n·TINY to the margins (‖ΔB‖₂ ≤ ‖ΔB‖_F). An end whose outward rounding overflows becomes
±inf (λ = FLOAT_MAX gets [≈FLOAT_MAX, inf]); an eigenvalue certainly beyond the float64
range (its inner end overflows) is an OverflowError.

What is certified: the eigenvalues of the symmetric part (A + Aᵀ)/2 of the matrix as given
(float16/bfloat16/float32 entries widened exactly to float64). Its distance to the lower
triangle that Cholesky reads is ‖A − Aᵀ‖_F/2, bounded above by Lemma S of rounding.py from
``square_stats``' sum of squared differences (depth n² + 3 per term, n² products):

    ‖A − Aᵀ‖_F ≤ √(S(ŝ)) · (1 + 2u)   (a difference rounds by u and has no underflow error).

A matrix whose asymmetry exceeds 200·n·ε·‖A‖_F is refused as not symmetric.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from .certify import (
    ShiftTest,
    cholesky_inverse_matvec,
    cholesky_shift_test,
    rayleigh_bounds,
)
from .inputs import as_matrix, as_real_tensor, nonfinite_error
from .lanczos import lanczos, start_vector
from .native import SquareStats, square_stats, symv_upper
from .operators import CheckedOperator, SymmetricOperator, is_operator
from .rounding import (
    TINY,
    UNIT_ROUNDOFF,
    down,
    gamma_up,
    require_gradual_underflow,
    scale_exponent,
    scale_tensor,
    sqrt_bounds,
    sum_bounds_fraction,
    unscale,
    up,
)

Method = Literal["auto", "dense", "cholesky", "lanczos"]
DENSE_LIMIT = 12_000  # CPU
SMALL_DENSE = 256  # "auto" uses "dense" up to this size


def dense_limit(device: torch.device) -> int:
    """Largest n for which "auto" factorises a stored n × n matrix on ``device``."""
    if device.type != "cuda":
        return DENSE_LIMIT
    total = torch.cuda.get_device_properties(device).total_memory
    return max(DENSE_LIMIT, math.isqrt(total // (2 * 4 * 8)))


__all__ = [
    "DENSE_LIMIT",
    "PreparedMatrix",
    "SpectrumBounds",
    "as_matrix",
    "dense_limit",
    "eig_bounds",
]


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


@dataclass(frozen=True)
class PreparedMatrix:
    """A checked stored matrix A, scaled: ``b`` (float64, n×n) = 2^e·A up to ``perturb`` ≥
    ‖b − 2^e·A‖₂; ``asym`` ≥ ‖b − bᵀ‖_F (certified); ``stats`` are b's reductions."""

    b: torch.Tensor
    exponent: int
    stats: SquareStats
    asym: float
    perturb: float

    @property
    def n(self) -> int:
        return int(self.b.shape[0])

    @property
    def extra(self) -> float:
        """≥ ‖sym(2^e·A) − L(b)‖₂: the term each Cholesky certificate subtracts."""
        return up(up(self.asym / 2.0) + self.perturb)

    def lower(self, x: float, what: str) -> float:
        """A certified lower bound in b's units mapped back to A's (outward)."""
        return _unscale_checked(x, -self.exponent, upward=False, what=what)

    def upper(self, x: float, what: str) -> float:
        return _unscale_checked(x, -self.exponent, upward=True, what=what)


def _unscale_checked(x: float, e: int, upward: bool, what: str) -> float:
    """x·2^e as an outward bound (``upward``: an upper bound). An end that overflows on its
    outer side becomes ±inf (a valid bracket such as [FLOAT_MAX, inf]); one that overflows
    on its inner side proves the value beyond the float64 range: an OverflowError."""
    if math.isfinite(x) and x != 0.0 and (x > 0) != upward:
        try:
            math.ldexp(x, e)
        except OverflowError:
            raise OverflowError(
                f"{what} is about {'' if x > 0 else '−'}2^{math.frexp(x)[1] + e}, beyond the "
                "float64 range: pass the matrix multiplied by a power of two and scale the "
                "bounds back"
            ) from None
    return unscale(x, e, upward)


def _asym_upper(b: torch.Tensor, stats: SquareStats) -> float:
    """Certified ‖B − Bᵀ‖_F from the computed sum of squared differences (module doc)."""
    n = int(b.shape[0])
    if stats.asym_sq == 0.0:
        # every computed square was 0, so every computed difference was below 2^-537 (a
        # square of at least 2^-537 is at least 2^-1074, and sums of positive numbers are
        # positive): ‖B − Bᵀ‖_F ≤ n·2^-537·(1 + 2u), without another pass over B
        return up(n * 2.0**-537 * up(1.0 + 2.0 * UNIT_ROUNDOFF))
    _, hi = sum_bounds_fraction(stats.asym_sq, depth=n * n + 3, ops=n * n)
    return up(sqrt_bounds(hi, hi)[1] * up(1.0 + 2.0 * UNIT_ROUNDOFF))


def prepare_matrix(K: object, name: str = "K", eps: float | None = None) -> PreparedMatrix:
    """Check a stored matrix (tensor or numpy array, square or (n, n, k, k)) and scale it by
    a power of two when its entries leave the safe window (module docstring).

    Raises:
        TypeError / ValueError: non-real, non-float, empty, non-square, NaN/Inf entries, or
            asymmetry beyond the rounding tolerance 200·n·eps·‖K‖_F (eps: that of K's
            dtype unless given); messages name ``name``.
    """
    t = as_real_tensor(K, name)
    orig_eps = _eps_of(K, t) if eps is None else eps
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    a = as_matrix(t, name)
    require_gradual_underflow()
    stats = square_stats(a)
    if stats.nonfinite:
        raise nonfinite_error(name, stats.nonfinite)
    e = scale_exponent(stats.max_abs)
    b = scale_tensor(a, e)
    if e != 0:
        stats = square_stats(b)
    n = int(b.shape[0])
    asym = _asym_upper(b, stats)
    tol = 200 * n * orig_eps * stats.fro
    if stats.asym_fro > tol:
        term = f"({name})" if " " in name else name
        raise ValueError(
            f"{name} is not symmetric: ‖{term} − {term}ᵀ‖_F = {_fmt(stats.asym_fro, -e)} "
            f"exceeds the rounding tolerance {_fmt(tol, -e)} (‖{term}‖_F = "
            f"{_fmt(stats.fro, -e)})"
        )
    perturb = up(n * TINY) if e < 0 else 0.0
    return PreparedMatrix(b, e, stats, asym, perturb)


def _fmt(x: float, e: int) -> str:
    """x·2^e for a message (written as x·2^e when it is beyond the float range)."""
    try:
        return f"{math.ldexp(x, e):.3g}"
    except OverflowError:
        return f"{x:.3g}·2^{e}"


def _eps_of(K: object, t: torch.Tensor) -> float:
    """Machine epsilon of the dtype the caller gave (before any widening)."""
    if isinstance(K, np.ndarray):
        return float(np.finfo(K.dtype).eps)
    dtype = K.dtype if torch.is_tensor(K) else t.dtype
    return float(torch.finfo(dtype).eps)


def _gershgorin(b: torch.Tensor, stats: SquareStats) -> tuple[float, float]:
    diag = b.diagonal().cpu()
    return float((diag - stats.row_abs).min()), float((diag + stats.row_abs).max())


def _rounding_scale(n: int, stats: SquareStats) -> float:
    """γ_{n+2} · max(|tr B|, max |b_ij|): the size of one Cholesky certificate's margin."""
    return gamma_up(n + 2) * max(abs(stats.trace), stats.max_abs, 1e-300)


def bracket_min(
    prep: PreparedMatrix,
    estimate: float,
    rtol: float,
    seed: int,
    negate: bool = False,
    prior: ShiftTest | None = None,
) -> tuple[float, float, float, int]:
    """Certified [lower, upper] on λ_min of sym(±b) in b's units (``negate`` brackets
    λ_min(−b) = −λ_max(b)).

    Every successful Cholesky test of ±b − sI proves λ_min > s − δ; its factor drives a short
    shift-and-invert Lanczos run whose Ritz vector gives a rigorous Rayleigh-quotient upper
    end and an estimate for the next, higher shift (failed tests step back towards the last
    success). ``estimate`` seeds the first shift unless ``prior`` (an already successful test)
    is given. Returns (lower, upper, margin, solves): margin is the rounding allowance of the
    two certificates (Cholesky δ + Rayleigh-quotient error), solves the number of
    triangular-solve pairs used."""
    a, stats, n, extra = prep.b, prep.stats, prep.n, prep.extra
    base_margin = _rounding_scale(n, stats) + extra
    g_lo, g_hi = _gershgorin(a, stats)
    floor_raw = -g_hi if negate else g_lo
    floor = floor_raw - 4 * base_margin - abs(floor_raw) * 1e-12
    gap = max(4 * base_margin, rtol * abs(estimate) / 4, 1e-300)
    start = start_vector(n, seed, device=a.device)
    best, upper, rounding, solves = None, math.inf, math.nan, 0
    failed_at = math.inf
    shift: float | None = None if prior is not None else max(estimate - gap, floor)
    pending = prior
    for _ in range(60):
        if pending is not None:
            test, pending = pending, None
        else:
            assert shift is not None
            test = cholesky_shift_test(a, shift, extra, negate)
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
        upper = min(upper, up(rq_hi + prep.perturb))
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


def _first_min_test(prep: PreparedMatrix) -> ShiftTest | None:
    """A Cholesky test at s₀ a few rounding margins below 0: succeeds for any PSD matrix (an
    NTK), proving λ_min > s₀ − δ and providing the factor for shift-and-invert Lanczos."""
    s0 = -16 * _rounding_scale(prep.n, prep.stats) - 2 * prep.extra
    test = cholesky_shift_test(prep.b, s0, prep.extra)
    return test if test.success else None


def _check_options(which: tuple[str, ...], method: str) -> None:
    bad = set(which) - {"min", "max"}
    if bad or not which:
        raise ValueError(f"which must be a non-empty subset of ('min', 'max'), got {which}")
    if method not in ("auto", "dense", "cholesky", "lanczos"):
        raise ValueError(f"unknown method {method!r}")


def _check_seed(seed: object) -> None:
    """Seeds are CPU generator seeds; ``seed + 1`` is used too."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) <= 2**64 - 2:
        raise ValueError(f"seed must be an integer in [0, 2**64 - 2], got {seed}")


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
        K: a square symmetric dense tensor or numpy array (float16/bfloat16/float32/
            float64; half precisions are widened exactly to float64, with a one-time
            ``WidenedInputWarning``), an (n, n, k, k) NTK from ``empirical_ntk`` (read as
            the (n·k)×(n·k) matrix in sample-major order), or an operator with ``shape``
            and ``matvec`` (optionally ``psd = True``), e.g. :class:`lplr_fast.NTKOperator`
            or a scipy ``LinearOperator``.
        which: the ends wanted, a subset of ("min", "max"); the other end is reported as
            [-inf, inf] and costs nothing.
        method: "auto", "dense", "cholesky" or "lanczos" (see module docstring).
        rtol: target relative width of each bracket (the rounding margin may force more).
        certify: with False, "dense" (and "auto" on stored matrices) returns the eigvalsh
            values as both ends, labelled uncertified.
        seed: seeds the random start vectors (results are reproducible); an integer in
            [0, 2**64 − 2].

    Returns:
        A :class:`SpectrumBounds` (in K's units).

    Raises:
        TypeError, ValueError: bad input (named), e.g. NaN/Inf entries or asymmetry.
        OverflowError: a requested eigenvalue lies certainly beyond the float64 range (an
            end that overflows only by its outward rounding is ±inf instead).
    """
    t0 = time.perf_counter()
    _check_options(which, method)
    _check_seed(seed)
    if is_operator(K):
        if method not in ("auto", "lanczos"):
            raise ValueError(f"method={method!r} needs a stored matrix; operators use 'lanczos'")
        return _operator_bounds(K, which, rtol, seed, t0)  # type: ignore[arg-type]
    return bounds_of_prepared(prepare_matrix(K, "K"), which, method, rtol, certify, seed, t0)


def bounds_of_prepared(
    prep: PreparedMatrix,
    which: tuple[str, ...] = ("min", "max"),
    method: Method = "auto",
    rtol: float = 1e-6,
    certify: bool = True,
    seed: int = 0,
    t0: float | None = None,
    what: str = "K",
) -> SpectrumBounds:
    """:func:`eig_bounds` of an already checked and scaled stored matrix."""
    t0 = time.perf_counter() if t0 is None else t0
    _check_options(which, method)
    if method == "auto":
        stored = "cholesky" if certify and prep.n > SMALL_DENSE else "dense"
        method = "lanczos" if prep.n > dense_limit(prep.b.device) else stored
    if method == "lanczos":
        return _stored_lanczos_bounds(prep, which, rtol, seed, t0, what)
    if prep.stats.max_abs == 0.0:  # the zero matrix: every eigenvalue is exactly 0
        return _exact_zero(prep.n, which, method, t0)
    scaled = _certified_scaled(prep, which, method, rtol, certify, seed)
    lo_min, hi_min, lo_max, hi_max, m_min, m_max, matvecs, certified = scaled
    e_min, e_max = f"λ_min of {what}", f"λ_max of {what}"
    return SpectrumBounds(
        prep.lower(lo_min, e_min), prep.upper(hi_min, e_min),
        prep.lower(lo_max, e_max), prep.upper(hi_max, e_max),
        certified and "min" in which, certified and "max" in which, method, matvecs,
        time.perf_counter() - t0, prep.n,
        prep.upper(m_min, "margin"), prep.upper(m_max, "margin"),
    )  # fmt: skip


def _exact_zero(n: int, which, method: str, t0: float) -> SpectrumBounds:
    lo_min, hi_min = (0.0, 0.0) if "min" in which else (-math.inf, math.inf)
    lo_max, hi_max = (0.0, 0.0) if "max" in which else (-math.inf, math.inf)
    return SpectrumBounds(
        lo_min, hi_min, lo_max, hi_max, "min" in which, "max" in which, method, 0,
        time.perf_counter() - t0, n, 0.0, 0.0,
    )  # fmt: skip


def _certified_scaled(
    prep: PreparedMatrix, which, method: str, rtol: float, certify: bool, seed: int
) -> tuple[float, float, float, float, float, float, int, bool]:
    """The brackets in b's units: (lo_min, hi_min, lo_max, hi_max, margin_min, margin_max,
    matvecs, certified)."""
    b, n = prep.b, prep.n
    matvecs = 0
    prior: ShiftTest | None = None
    est_min = est_max = math.nan
    if method == "dense":
        evals = torch.linalg.eigvalsh(b if prep.stats.asym_sq == 0 else (b + b.T) / 2)
        est_min, est_max = evals[0].item(), evals[-1].item()
        if not certify:
            return est_min, est_min, est_max, est_max, math.nan, math.nan, 0, False
    else:
        if "max" in which:
            lz = lanczos(
                lambda v: symv_upper(b, v), n, device=b.device, rtol=rtol / 8, seed=seed,
                max_iter=min(n, 200),
            )  # fmt: skip
            est_max, matvecs = lz.theta_max, lz.matvecs
        if "min" in which:
            prior = _first_min_test(prep)
            if prior is None:  # indefinite: Ritz estimate from Lanczos on B itself
                lz = lanczos(
                    lambda v: symv_upper(b, v), n, device=b.device, rtol=rtol, want_min=True,
                    seed=seed, max_iter=min(n, 200),
                )  # fmt: skip
                est_min = lz.theta_min
                matvecs += lz.matvecs
    lo_min, hi_min, lo_max, hi_max = -math.inf, math.inf, -math.inf, math.inf
    m_min = m_max = math.nan
    if "min" in which:
        lo_min, hi_min, m_min, solves = bracket_min(prep, est_min, rtol, seed, False, prior)
        matvecs += solves
    if "max" in which:
        lo, hi, m_max, solves = bracket_min(prep, -est_max, rtol, seed + 1, True)
        lo_max, hi_max = -hi, -lo
        matvecs += solves
    return lo_min, hi_min, lo_max, hi_max, m_min, m_max, matvecs, True


def _stored_lanczos_bounds(
    prep: PreparedMatrix, which, rtol: float, seed: int, t0: float, what: str
) -> SpectrumBounds:
    """Lanczos on the scaled matrix: Ritz estimates, and rigorous Rayleigh-quotient ends
    (λ_min ≤ RQ(y_min), λ_max ≥ RQ(y_max)) since the matrix is stored."""
    b = prep.b
    lz = lanczos(
        lambda v: symv_upper(b, v), prep.n, device=b.device, rtol=rtol,
        want_min="min" in which, seed=seed,
    )  # fmt: skip
    lo_min, hi_min, lo_max, hi_max = -math.inf, math.inf, -math.inf, math.inf
    e_min, e_max = f"λ_min of {what}", f"λ_max of {what}"
    if "min" in which:
        hi_min = prep.upper(up(rayleigh_bounds(b, lz.vec_min)[1] + prep.perturb), e_min)
    if "max" in which:
        rq_lo = rayleigh_bounds(b, lz.vec_max)[0]
        lo_max = prep.lower(down(rq_lo - prep.perturb), e_max)
        hi_max = prep.upper(lz.theta_max + lz.resid_max, e_max)
    return SpectrumBounds(
        lo_min, hi_min, lo_max, hi_max, False, False, "lanczos", lz.matvecs,
        time.perf_counter() - t0, prep.n,
    )  # fmt: skip


def _operator_bounds(
    op: SymmetricOperator, which, rtol: float, seed: int, t0: float
) -> SpectrumBounds:
    """Matrix-free Lanczos estimates (uncertified)."""
    checked = CheckedOperator(op, "K")
    n = checked.shape[0]
    lz = lanczos(checked.matvec, n, dtype=checked.dtype, device=checked.device, rtol=rtol,
                 want_min="min" in which, seed=seed)  # fmt: skip
    psd = checked.psd
    lo_min = 0.0 if psd else -math.inf
    hi_min = lz.theta_min if "min" in which else math.inf
    if "max" in which:
        lo_max, hi_max = lz.theta_max, lz.theta_max + lz.resid_max
    else:
        lo_max, hi_max = -math.inf, math.inf
    return SpectrumBounds(
        lo_min, hi_min, lo_max, hi_max, False, False, "lanczos", lz.matvecs,
        time.perf_counter() - t0, n,
    )  # fmt: skip
