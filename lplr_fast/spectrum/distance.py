"""NTK drift ‖K₁ − K₀‖ in the operator (2-) norm or the Frobenius norm.

Inputs may be stored kernels (square matrices or (n, n, k, k) NTKs, tensors or numpy
arrays), matrix-free operators (``shape`` + ``matvec``, e.g. :class:`lplr_fast.NTKOperator`
or a scipy ``LinearOperator``) or tile generators (the ``((rows, cols), tile)`` pairs of
:func:`lplr_fast.ntk_blocks` with x2=None). What is measured is the exact difference
D = K₁ − K₀ of the kernels as given.

* stored (certified): D̂ = fl(K₁ − K₀) in float64. A difference has no underflow error, so
  D̂ = D + Δ with |Δ| ≤ u|D| ≤ 2u|D̂| entrywise and ‖Δ‖₂ ≤ ‖Δ‖_F ≤ 2u‖D̂‖_F. Frobenius:
  ‖D̂‖_F enclosed by a scaled sum of squares (row sums, then their sum: Lemma S with depth
  2N + 1), widened by 2u‖D̂‖_F. 2-norm: ‖sym D̂‖₂ = max(λ_max, −λ_min) from the certified
  brackets of :func:`eig_bounds` (which scales D̂ itself), ‖D̂‖₂ ≤ ‖sym D̂‖₂ + ‖D̂ − D̂ᵀ‖_F/2
  and ≤ ‖D̂‖_F, widened by 2u‖D̂‖_F. Above 12 000 rows eig_bounds only estimates; its
  Rayleigh-quotient ends still give a rigorous lower end and ‖D̂‖_F the upper end (a loose
  but certified bracket, method "lanczos"). A difference beyond the float64 range is an
  OverflowError.
* tiles (certified): the same D̂ tile by tile into :class:`StreamingBounds` (upper=True,
  psd=False); ‖M‖_F enclosed from the streamed sums, ‖S‖₂ (S = sym M) bracketed by its
  eigenvalue bounds and ‖S‖_F/√N from below, ‖M‖₂ ≤ ‖S‖₂ + ‖M − Mᵀ‖_F/2; rigorous but looser.
* operators (estimates, ``certified=False``): 2-norm from Lanczos on v ↦ K₁v − K₀v (largest
  |Ritz value| below, plus the Ritz residual above); Frobenius from the N products with the
  basis vectors. The operators' own rounding is not bounded, so neither is labelled
  certified. A stored kernel mixed with an operator is used as an operator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Literal

import torch

from .bounds import bounds_of_prepared, prepare_matrix
from .inputs import as_matrix, as_real_tensor, nonfinite_error
from .lanczos import lanczos
from .native import square_stats
from .operators import CheckedOperator, SymmetricOperator, is_operator
from .rounding import (
    UNIT_ROUNDOFF,
    down,
    require_gradual_underflow,
    safe_norm,
    scale_exponent,
    scale_tensor,
    sqrt_bounds,
    sum_bounds_fraction,
    unscale,
    up,
)
from .streaming import StreamingBounds

_TWO_U = 2.0 * UNIT_ROUNDOFF


@dataclass(frozen=True)
class NormBounds:
    """‖K₁ − K₀‖ ∈ [lower, upper]; ``value`` is the midpoint of the bracket. ``certified``:
    both ends are rigorous (otherwise they are estimates)."""

    value: float
    lower: float
    upper: float
    certified: bool
    ord: str
    method: str
    seconds: float

    def __float__(self) -> float:
        return self.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(lo: float, hi: float, certified: bool, ord: str, method: str, t0: float):
    lo = max(lo, 0.0)
    value = hi if not math.isfinite(hi) else 0.5 * lo + 0.5 * hi
    return NormBounds(value, lo, hi, certified, ord, method, time.perf_counter() - t0)


class _Difference:
    def __init__(self, op0: SymmetricOperator, op1: SymmetricOperator) -> None:
        self.op0, self.op1 = CheckedOperator(op0, "K0"), CheckedOperator(op1, "K1")
        if self.op0.shape != self.op1.shape:
            raise ValueError(f"operators differ in shape: {self.op0.shape} vs {self.op1.shape}")
        self.shape = self.op0.shape
        self.dtype, self.device = self.op1.dtype, self.op1.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        w1 = self.op1.matvec(v).to(device=v.device, dtype=v.dtype)
        return w1 - self.op0.matvec(v).to(device=v.device, dtype=v.dtype)


def _is_stored(k: object) -> bool:
    return torch.is_tensor(k) or hasattr(k, "__array__")


def _is_tile_pair(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], tuple)
        and len(item[0]) == 2
    )


def _kind(k: object, name: str) -> str:
    """ "stored", "operator" or "tiles"; a TypeError naming ``name`` for anything else."""
    if _is_stored(k):
        return "stored"
    if is_operator(k):
        return "operator"
    if isinstance(k, (list, tuple)) and k and not _is_tile_pair(k[0]):
        raise TypeError(
            f"{name} is a list of numbers, not a stream of ((rows, cols), tile) pairs: pass "
            f"a stored kernel as a tensor or numpy array (torch.tensor({name}))"
        )
    if isinstance(k, (str, bytes, dict)) or not isinstance(k, Iterable):
        raise TypeError(
            f"{name} must be a tensor or numpy array, an operator (shape + matvec) or an "
            f"iterable of ((rows, cols), tile) pairs, got {type(k).__name__}"
        )
    return "tiles"


def ntk_distance(
    K0: torch.Tensor | SymmetricOperator | Iterable,
    K1: torch.Tensor | SymmetricOperator | Iterable,
    ord: Literal[2, "fro"] = 2,
    *,
    rtol: float = 1e-6,
    n: int | None = None,
) -> NormBounds:
    """‖K1 − K0‖ in the 2-norm (``ord=2``) or Frobenius norm (``ord="fro"``).

    Args:
        K0, K1: both stored kernels, both operators, or both tile generators (see module
            docstring); a stored kernel and an operator may be mixed (the stored one is used
            as an operator). Nested Python lists are refused: wrap them in a tensor.
        ord: 2 or "fro".
        rtol: target relative width of the 2-norm bracket.
        n: number of samples, required for tile generators.

    Returns:
        A :class:`NormBounds`; ``float(result)`` is the value.

    Raises:
        TypeError / ValueError: bad inputs (named K0 / K1), NaN/Inf entries, mismatched
            shapes or tiles. OverflowError: the difference exceeds the float64 range.
    """
    t0 = time.perf_counter()
    if ord not in (2, "fro"):
        raise ValueError(f"ord must be 2 or 'fro', got {ord!r}")
    kinds = {_kind(K0, "K0"), _kind(K1, "K1")}
    if kinds == {"stored"}:
        return _stored(K0, K1, ord, rtol, t0)
    if "operator" in kinds:
        return _operators(_as_operator(K0, "K0"), _as_operator(K1, "K1"), ord, rtol, t0)
    if "stored" in kinds:
        raise TypeError("a stored kernel cannot be compared with a tile stream; pass two of a kind")
    if n is None:
        raise ValueError("n (the number of samples) is required when K0 and K1 are tile streams")
    return _tiles(K0, K1, ord, n, t0)  # type: ignore[arg-type]


def _difference(a0: torch.Tensor, a1: torch.Tensor, what: str) -> torch.Tensor:
    """fl(a1 − a0) in float64 after checking both are finite and on one device."""
    if a0.device != a1.device:
        raise ValueError(f"K0{what} is on {a0.device} and K1{what} on {a1.device}: move one")
    for name, a in (("K0", a0), ("K1", a1)):
        bad = int((~torch.isfinite(a)).sum())
        if bad:
            raise nonfinite_error(f"{name}{what}", bad)
    d = a1.to(torch.float64) - a0.to(torch.float64)
    if not bool(torch.isfinite(d).all()):
        raise OverflowError(
            f"K1 − K0{what} exceeds the float64 range: scale both kernels by a power of two"
        )
    return d


def frobenius_bounds(t: torch.Tensor) -> tuple[float, float]:
    """Certified [lo, hi] ∋ ‖t‖_F of a finite float tensor: scaled by a power of two when
    its entries leave the safe window, squares summed by rows then over rows (Lemma S,
    depth ≤ 2·max(shape) + 1 per term), bounds mapped back outward."""
    t2 = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
    top = float(t2.abs().max()) if t2.numel() else 0.0
    if top == 0.0:
        return 0.0, 0.0
    e = scale_exponent(top)
    s = scale_tensor(t2, e)
    total = float((s * s).sum(dim=1).sum())
    entries = s.numel()
    lo, hi = sum_bounds_fraction(total, depth=sum(s.shape) + 1, ops=entries)
    if e < 0:  # entries made subnormal moved by ≤ 2⁻¹⁰⁷⁴ each: |(s + ε)² − s²| ≤ 2⁻¹⁰⁷²
        slack = entries * Fraction(2) ** -1072
        lo, hi = max(lo - slack, Fraction(0)), hi + slack
    f_lo, f_hi = sqrt_bounds(lo, hi)
    return unscale(f_lo, -e, upward=False), unscale(f_hi, -e, upward=True)


def _widen(lo: float, hi: float, fro_hi: float) -> tuple[float, float]:
    """[lo, hi] of a norm of D̂ → of D (‖D − D̂‖ ≤ 2u‖D̂‖_F ≤ 2u·fro_hi)."""
    delta = up(_TWO_U * fro_hi)
    return down(lo - delta), up(hi + delta)


def _stored(k0: object, k1: object, ord, rtol: float, t0: float) -> NormBounds:
    t_0, t_1 = as_real_tensor(k0, "K0"), as_real_tensor(k1, "K1")
    eps = max(_eps(k0, t_0), _eps(k1, t_1))
    a0, a1 = as_matrix(t_0, "K0"), as_matrix(t_1, "K1")
    if a0.shape != a1.shape:
        raise ValueError(f"kernels differ in shape: {tuple(a0.shape)} vs {tuple(a1.shape)}")
    if a0.numel() == 0:
        raise ValueError("K0 and K1 are empty")
    require_gradual_underflow()
    d = _difference(a0, a1, "")
    fro_lo, fro_hi = frobenius_bounds(d)
    if ord == "fro":
        lo, hi = _widen(fro_lo, fro_hi, fro_hi)
        return _result(lo, hi, True, "fro", "exact", t0)
    prep = prepare_matrix(d, "K1 − K0", eps=eps)
    b = bounds_of_prepared(prep, rtol=rtol, what="K1 − K0")
    sym_lo = max(b.lambda_max_lower, -b.lambda_min_upper, 0.0)
    sym_hi = max(b.lambda_max_upper, -b.lambda_min_lower)
    skew = unscale(prep.extra, -prep.exponent, upward=True)  # ≥ ‖D̂ − D̂ᵀ‖_F / 2
    # ‖D̂‖₂ ≤ ‖D̂‖_F keeps the upper end finite when eig_bounds only estimates (n > 12 000:
    # Lanczos, whose Rayleigh-quotient lower ends stay rigorous), so the bracket is certified
    lo, hi = _widen(sym_lo, min(up(sym_hi + skew), fro_hi), fro_hi)
    return _result(lo, hi, True, "2", b.method, t0)


def _eps(k: object, t: torch.Tensor) -> float:
    dtype = getattr(k, "dtype", t.dtype)
    try:
        return float(torch.finfo(dtype).eps)
    except TypeError:  # a numpy dtype
        import numpy as np

        return float(np.finfo(dtype).eps)


class _Stored:
    def __init__(self, k: object, name: str) -> None:
        self.a = as_matrix(as_real_tensor(k, name), name)
        stats = square_stats(self.a)
        if stats.nonfinite:
            raise nonfinite_error(name, stats.nonfinite)
        self.shape = tuple(self.a.shape)
        self.dtype, self.device = self.a.dtype, self.a.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a @ v.to(self.a.dtype)


def _as_operator(k: object, name: str) -> SymmetricOperator:
    if _is_stored(k):
        return _Stored(k, name)
    if is_operator(k):
        return k  # type: ignore[return-value]
    raise TypeError("a tile stream cannot be compared with an operator; pass two of a kind")


def _operators(op0, op1, ord, rtol: float, t0: float) -> NormBounds:
    diff = _Difference(op0, op1)
    size = int(diff.shape[0])
    if ord == "fro":
        norms = []
        for j in range(size):
            e = torch.zeros(size, dtype=diff.dtype, device=diff.device)
            e[j] = 1.0
            norms.append(safe_norm(diff.matvec(e).to(torch.float64)))
        value = float(safe_norm(torch.stack(norms)))
        if not math.isfinite(value):
            raise ValueError("the operators' products are not finite (NaN/Inf)")
        return _result(value, value, False, "fro", "basis products", t0)
    lz = lanczos(diff.matvec, size, dtype=diff.dtype, device=diff.device, rtol=rtol, want_min=True)
    lower = max(abs(lz.theta_min), abs(lz.theta_max))
    upper = max(abs(lz.theta_min) + lz.resid_min, abs(lz.theta_max) + lz.resid_max)
    return _result(lower, upper, False, "2", "lanczos", t0)


def _tile_value(value: object, name: str) -> torch.Tensor:
    tile = value[0] if isinstance(value, tuple) else value
    return as_real_tensor(tile, name)


def _pairs(stream: Iterable, name: str):
    for i, item in enumerate(stream):
        if not _is_tile_pair(item):
            raise TypeError(
                f"{name} tile stream: item {i} is not a ((rows, cols), tile) pair (got "
                f"{type(item).__name__})"
            )
        yield item


def _tiles(s0: Iterable, s1: Iterable, ord, n: int, t0: float) -> NormBounds:
    stream = StreamingBounds(n, upper=True, psd=False)
    for (key0, v0), (key1, v1) in zip(_pairs(s0, "K0"), _pairs(s1, "K1"), strict=True):
        if key0 != key1:
            raise ValueError(f"tile streams disagree: {key0} vs {key1}")
        a, b = _tile_value(v0, "K0 tile"), _tile_value(v1, "K1 tile")
        if a.shape != b.shape:
            raise ValueError(
                f"tiles at {key0} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        stream.update(key0[0], key0[1], _difference(a, b, f" tile {key0}"))
    fro_lo, fro_hi = stream.frobenius_bounds()
    if ord == "fro":
        lo, hi = _widen(fro_lo, fro_hi, fro_hi)
        return _result(lo, hi, True, "fro", "tiles", t0)
    b = stream.bounds()
    by_fro = down(stream.sym_frobenius_lower() / up(math.sqrt(b.n)))  # Σλ² ≤ N·‖S‖₂²
    sym_lo = max(b.lambda_max_lower, -b.lambda_min_upper, by_fro, 0.0)
    sym_hi = max(b.lambda_max_upper, -b.lambda_min_lower)
    skew = up(stream.skew_frobenius_upper() / 2.0)
    lo, hi = _widen(sym_lo, min(up(sym_hi + skew), fro_hi), fro_hi)
    return _result(lo, hi, True, "2", "streaming", t0)
