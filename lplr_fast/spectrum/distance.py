"""NTK drift ‖Θ₁ − Θ₀‖ in the operator (2-) norm or the Frobenius norm.

Inputs may be stored kernels (square matrices or (n, n, k, k) NTKs), matrix-free operators
(``shape`` + ``matvec``, e.g. :class:`lplr_fast.NTKOperator`) or tile generators (the
``((rows, cols), tile)`` pairs of :func:`lplr_fast.ntk_blocks` with x2=None).

* stored: Frobenius exactly; 2-norm = max(λ_max(D), −λ_min(D)) from the certified brackets
  of :func:`eig_bounds` on D = Θ₁ − Θ₀.
* operators: 2-norm from Lanczos on v ↦ Θ₁v − Θ₀v: the largest |Ritz value| is a lower
  bound (Ritz values lie in [λ_min, λ_max]); the upper end adds the Ritz residual and is an
  estimate, not certified. Frobenius exactly by applying D to every basis vector (N products).
* tiles: Frobenius exactly; 2-norm bracketed by the streaming bounds of D (Gershgorin row
  sums and ‖D‖_F above, max |d_ii| and ‖D‖_F/√N below), all rigorous but looser.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from .bounds import SymmetricOperator, as_matrix, eig_bounds
from .certify import UNIT_ROUNDOFF
from .lanczos import lanczos
from .streaming import StreamingBounds


@dataclass(frozen=True)
class NormBounds:
    """‖Θ₁ − Θ₀‖ ∈ [lower, upper]; ``value`` is the best single number (exact for "fro" on
    stored kernels and tiles, the midpoint of the bracket for the 2-norm). ``certified``:
    both ends are rigorous."""

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


class _Difference:
    def __init__(self, op0: SymmetricOperator, op1: SymmetricOperator) -> None:
        if tuple(op0.shape) != tuple(op1.shape):
            raise ValueError(f"operators differ in shape: {op0.shape} vs {op1.shape}")
        self.shape = tuple(op0.shape)
        self.dtype = getattr(op1, "dtype", torch.float64)
        self.device = getattr(op1, "device", torch.device("cpu"))
        self.op0, self.op1 = op0, op1

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op1.matvec(v) - self.op0.matvec(v)


def _is_operator(k: object) -> bool:
    return hasattr(k, "matvec") and hasattr(k, "shape") and not torch.is_tensor(k)


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
            as an operator).
        ord: 2 or "fro".
        rtol: target relative width of the 2-norm bracket.
        n: number of samples, required for tile generators.

    Returns:
        A :class:`NormBounds`; ``float(result)`` is the value.
    """
    t0 = time.perf_counter()
    if ord not in (2, "fro"):
        raise ValueError(f"ord must be 2 or 'fro', got {ord!r}")
    if torch.is_tensor(K0) and torch.is_tensor(K1):
        return _stored(K0, K1, ord, rtol, t0)
    if _is_operator(K0) or _is_operator(K1):
        return _operators(_as_operator(K0), _as_operator(K1), ord, rtol, t0)
    if n is None:
        raise ValueError("n (the number of samples) is required when K0 and K1 are tile streams")
    return _tiles(K0, K1, ord, n, t0)  # type: ignore[arg-type]


def _stored(k0: torch.Tensor, k1: torch.Tensor, ord, rtol: float, t0: float) -> NormBounds:
    a0, a1 = as_matrix(k0), as_matrix(k1)
    if a0.shape != a1.shape:
        raise ValueError(f"kernels differ in shape: {tuple(a0.shape)} vs {tuple(a1.shape)}")
    d = a1.double() - a0.double()
    if ord == "fro":
        value = float(d.norm())
        err = 2 * (d.numel() + 2) * UNIT_ROUNDOFF * value
        return NormBounds(
            value, value - err, value + err, True, "fro", "exact", time.perf_counter() - t0
        )
    b = eig_bounds(d, rtol=rtol)
    lower = max(b.lambda_max_lower, -b.lambda_min_upper, 0.0)
    upper = max(b.lambda_max_upper, -b.lambda_min_lower)
    return NormBounds(
        0.5 * (lower + upper),
        lower,
        upper,
        b.certified_min and b.certified_max,
        "2",
        b.method,
        time.perf_counter() - t0,
    )


class _Stored:
    def __init__(self, k: torch.Tensor) -> None:
        self.a = as_matrix(k)
        self.shape = tuple(self.a.shape)
        self.dtype, self.device = self.a.dtype, self.a.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a @ v.to(self.a.dtype)


def _as_operator(k: object) -> SymmetricOperator:
    if torch.is_tensor(k):
        return _Stored(k)
    if _is_operator(k):
        return k  # type: ignore[return-value]
    raise TypeError("a tile stream cannot be compared with an operator; pass two of a kind")


def _operators(op0, op1, ord, rtol: float, t0: float) -> NormBounds:
    diff = _Difference(op0, op1)
    size = int(diff.shape[0])
    if ord == "fro":
        total = 0.0
        for j in range(size):
            e = torch.zeros(size, dtype=diff.dtype, device=diff.device)
            e[j] = 1.0
            total += float((diff.matvec(e).double() ** 2).sum())
        value = math.sqrt(total)
        return NormBounds(
            value, value, value, False, "fro", "basis products", time.perf_counter() - t0
        )
    lz = lanczos(diff.matvec, size, dtype=diff.dtype, device=diff.device, rtol=rtol, want_min=True)
    lower = max(abs(lz.theta_min), abs(lz.theta_max))
    upper = max(abs(lz.theta_min) + lz.resid_min, abs(lz.theta_max) + lz.resid_max)
    return NormBounds(
        0.5 * (lower + upper), lower, upper, False, "2", "lanczos", time.perf_counter() - t0
    )


def _tiles(s0: Iterable, s1: Iterable, ord, n: int, t0: float) -> NormBounds:
    stream = StreamingBounds(n, upper=True, psd=False)
    for (tile0, t0_value), (tile1, t1_value) in zip(s0, s1, strict=True):
        if tile0 != tile1:
            raise ValueError(f"tile streams disagree: {tile0} vs {tile1}")
        a = t0_value[0] if isinstance(t0_value, tuple) else t0_value
        b = t1_value[0] if isinstance(t1_value, tuple) else t1_value
        stream.update(tile0[0], tile0[1], b.double() - a.double())
    if ord == "fro":
        value = stream.frobenius
        b = stream.bounds()
        err = math.sqrt(b.margin_max)
        return NormBounds(
            value,
            max(0.0, value - err),
            value + err,
            True,
            "fro",
            "tiles",
            time.perf_counter() - t0,
        )
    b = stream.bounds()
    size = b.n
    by_fro = stream.frobenius / math.sqrt(size) - math.sqrt(b.margin_max / size)  # Σλ² ≤ N‖D‖²
    lower = max(b.lambda_max_lower, -b.lambda_min_upper, by_fro, 0.0)
    upper = max(b.lambda_max_upper, -b.lambda_min_lower)
    return NormBounds(
        0.5 * (lower + upper), lower, upper, True, "2", "streaming", time.perf_counter() - t0
    )
