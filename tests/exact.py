"""Exact rational checks of eigenvalue brackets for small symmetric float matrices.

A float64 matrix is a dyadic rational matrix A = Z·2^-s with Z an integer matrix. The
characteristic polynomial p of Z is computed exactly (Faddeev–LeVerrier over the integers:
every division is exact). All roots of p are real (Z is symmetric), so Descartes' rule of
signs is exact: the number of roots of p above x equals the number of sign changes of the
coefficients of p(x + t) once the factor t^m (m roots at x) is divided out. That counts the
eigenvalues of A below, at and above any float x without rounding.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch


def _v2(k: int) -> int:
    return (k & -k).bit_length() - 1


def to_integer_matrix(a: list[list[Fraction]]) -> tuple[list[list[int]], int]:
    """(Z, s) with a = Z·2^-s exactly (entries must be dyadic rationals)."""
    s = None
    for row in a:
        for x in row:
            if x == 0:
                continue
            den = _v2(x.denominator) if x.denominator > 1 else -_v2(x.numerator)
            s = den if s is None else max(s, den)
    s = s or 0
    scale = Fraction(2) ** s
    z = [[x * scale for x in row] for row in a]
    assert all(v.denominator == 1 for row in z for v in row)
    return [[int(v) for v in row] for row in z], s


def charpoly(z: list[list[int]]) -> list[int]:
    """Coefficients [c_n, ..., c_0] of det(tI − Z) (c_n = 1), exactly."""
    n = len(z)
    coeffs = [1]
    m = [[0] * n for _ in range(n)]
    for k in range(1, n + 1):
        c_prev = coeffs[-1]
        m = [[sum(z[i][t] * m[t][j] for t in range(n)) + (c_prev if i == j else 0)
              for j in range(n)] for i in range(n)]  # fmt: skip
        tr = sum(sum(z[i][t] * m[t][i] for t in range(n)) for i in range(n))
        assert tr % k == 0
        coeffs.append(-tr // k)
    return coeffs


def _taylor_shift(coeffs: list[int], x: Fraction) -> list[Fraction]:
    """Coefficients (highest first) of q(t) = p(x + t)."""
    q = [Fraction(c) for c in coeffs]
    n = len(q) - 1
    for i in range(n):
        for j in range(1, n - i + 1):
            q[j] += x * q[j - 1]
    return q


def _sign_changes(values: list[Fraction]) -> int:
    signs = [v > 0 for v in values if v != 0]
    return sum(1 for a, b in itertools.pairwise(signs) if a != b)


class ExactSpectrum:
    """Counts the eigenvalues of sym(A) = (A + Aᵀ)/2 of a float tensor exactly."""

    def __init__(self, a: torch.Tensor | list[list[Fraction]]) -> None:
        if torch.is_tensor(a):
            a = [[Fraction(x) for x in row] for row in a.detach().to(torch.float64).cpu().tolist()]
        n = len(a)
        sym = [[(a[i][j] + a[j][i]) / 2 for j in range(n)] for i in range(n)]
        self.n = n
        self.sym = sym
        z, self.s = to_integer_matrix(sym)
        self.poly = charpoly(z)

    def counts(self, x: float) -> tuple[int, int, int]:
        """(#eigenvalues < x, # = x, # > x)."""
        if x == math.inf:
            return self.n, 0, 0
        if x == -math.inf:
            return 0, 0, self.n
        q = _taylor_shift(self.poly, Fraction(x) * Fraction(2) ** self.s)
        at = 0
        while q and q[-1] == 0:
            q.pop()
            at += 1
        above = _sign_changes(q)
        return self.n - at - above, at, above

    def min_in(self, lo: float, hi: float) -> bool:
        """λ_min ∈ [lo, hi]."""
        if not lo <= hi:
            return False
        below_lo = self.counts(lo)[0]
        below_hi, at_hi, _ = self.counts(hi)
        return below_lo == 0 and below_hi + at_hi >= 1

    def max_in(self, lo: float, hi: float) -> bool:
        """λ_max ∈ [lo, hi]."""
        if not lo <= hi:
            return False
        above_hi = self.counts(hi)[2]
        _, at_lo, above_lo = self.counts(lo)
        return above_hi == 0 and above_lo + at_lo >= 1

    def norm2_in(self, lo: float, hi: float) -> bool:
        """‖sym A‖₂ = max |λ| ∈ [lo, hi]."""
        if not hi >= 0 or not lo <= hi:
            return False
        inside = self.counts(-hi)[0] == 0 and self.counts(hi)[2] == 0
        if lo <= 0:
            return inside
        _, at_lo, above_lo = self.counts(lo)
        below_mlo, at_mlo, _ = self.counts(-lo)
        return inside and above_lo + at_lo + below_mlo + at_mlo >= 1


def frobenius_sq(a: torch.Tensor) -> Fraction:
    """‖A‖_F² exactly."""
    return sum((Fraction(x) ** 2 for x in a.detach().to(torch.float64).cpu().flatten().tolist()),
               Fraction(0))  # fmt: skip


def fro_in(a: torch.Tensor, lo: float, hi: float) -> bool:
    f2 = frobenius_sq(a)
    return lo <= hi and (lo <= 0 or Fraction(lo) ** 2 <= f2) and f2 <= Fraction(hi) ** 2
