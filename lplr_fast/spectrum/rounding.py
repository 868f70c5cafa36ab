"""Directed rounding, rounding-error lemmas and power-of-two scaling for the certificates.

Arithmetic model (IEEE 754 binary64, round to nearest, gradual underflow, on the CPU and on
CUDA): every operation returns

    fl(x ∘ y) = (x ∘ y)(1 + δ) + η,   |δ| ≤ u = 2⁻⁵³,

with the underflow error η = 0 for sums, differences and square roots (a subnormal sum is
exact) and |η| ≤ 2⁻¹⁰⁷⁵ ≤ TINY = 2⁻¹⁰²² for products and quotients. Flush-to-zero or
denormals-are-zero modes (``torch.set_flush_denormal(True)``) break this model for tiny
inputs; ``require_gradual_underflow`` refuses to certify while the CPU runs in such a mode
(CUDA has no such mode for float64).

Lemma S (sums of non-negative terms). Let s = Σ_k t_k with exact t_k ≥ 0, computed as ŝ by
forming the terms and adding them in any order, such that no term passes through more than
d roundings (its own formation and the additions on its path), at most p products or
quotients are performed in all, and every such product's η is afterwards only added or
multiplied by factors (1 + δ) (never by an operand larger than 1). Each t_k then enters ŝ
multiplied by at most d factors (1 + δ), and each η by at most d such factors, so with
d·u ≤ 1/4

    s(1 − u)^d − 2p·TINY ≤ ŝ ≤ s(1 + u)^d + 2p·TINY,

hence (using (1 − u)^−d ≤ 1 + 2du and (1 + u)^−d ≥ 1 − du)

    (ŝ − 2p·TINY)(1 − du) ≤ s ≤ (ŝ + 2p·TINY)(1 + 2du).               (S)

Summation trees: a sum of k terms has paths of at most k − 1 additions whatever the order
(blocked, pairwise, OpenMP partial sums: adding an exact zero is exact), so d = k for k
products summed, and a row sum followed by a sum of the row sums has d ≤ 2k'.

Outward rounding: for a finite real x and its round-to-nearest value x̂ (also after
overflow to ±inf), nextafter(x̂, −inf) ≤ x ≤ nextafter(x̂, +inf). Every scalar of a
certificate is produced that way (``down``/``up``); exact rationals (``fractions.Fraction``)
carry sums over many tiles.

Scaling: multiplying a float by 2^e is exact unless the result leaves the normal range;
scaling down can round entries that become subnormal, by at most 2⁻¹⁰⁷⁵ per step (steps
of at most 2^±1000; in two steps at most 2⁻¹⁰⁷⁴ in all), which the callers add as
‖ΔB‖₂ ≤ ‖ΔB‖_F ≤ n·TINY.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import torch

UNIT_ROUNDOFF = 2.0**-53
TINY = 2.0**-1022  # absolute underflow allowance per product or quotient (module docstring)
FLOAT_MAX = sys.float_info.max
# Inputs whose largest magnitude lies in [2^-SAFE_EXP, 2^SAFE_EXP) are used unscaled: their
# sums of squares, products and Lanczos norms can neither overflow nor lose more than the
# TINY terms to underflow. Outside the window, matrices and tiles are scaled into [1/2, 1).
SAFE_EXP = 256


def up(x: float) -> float:
    """The next float above x (an upper bound on the exact value x̂ was rounded from)."""
    return math.nextafter(x, math.inf)


def down(x: float) -> float:
    """The next float below x (a lower bound on the exact value x̂ was rounded from)."""
    return math.nextafter(x, -math.inf)


def gamma_up(m: int) -> float:
    """An upper bound on γ_m = m·u / (1 − m·u)."""
    mu = m * UNIT_ROUNDOFF  # exact for m < 2^53
    if mu >= 0.25:
        raise ValueError(f"problem too large for the float64 rounding bounds (m = {m})")
    return up(mu / down(1.0 - mu))


def sum_upper(computed: float, depth: int, ops: int) -> float:
    """Upper bound (S) on an exact sum of non-negative terms computed as ``computed`` with at
    most ``depth`` roundings on any term's path and ``ops`` operations in all."""
    du = depth * UNIT_ROUNDOFF
    if du > 0.25:
        raise ValueError(f"sum too long for the float64 rounding bounds ({depth} terms)")
    return up(up(computed + up(2.0 * ops * TINY)) * up(1.0 + 2.0 * du))


def sum_lower(computed: float, depth: int, ops: int) -> float:
    """Lower bound (S) on an exact sum of non-negative terms (never below 0)."""
    du = depth * UNIT_ROUNDOFF
    if du > 0.25:
        raise ValueError(f"sum too long for the float64 rounding bounds ({depth} terms)")
    return max(0.0, down(down(computed - up(2.0 * ops * TINY)) * down(1.0 - du)))


def sum_bounds_fraction(computed: float, depth: int, ops: int) -> tuple[Fraction, Fraction]:
    """(S) in exact dyadic rationals: [lower, upper] on the exact non-negative sum."""
    du = Fraction(depth) * Fraction(UNIT_ROUNDOFF)
    if du > Fraction(1, 4):
        raise ValueError(f"sum too long for the float64 rounding bounds ({depth} terms)")
    slack = 2 * ops * Fraction(TINY)
    s = Fraction(computed)
    return max(Fraction(0), (s - slack) * (1 - du)), (s + slack) * (1 + 2 * du)


def scale_exponent(max_abs: float) -> int:
    """e with max_abs·2^e in [1/2, 1) when max_abs lies outside the safe window
    [2^-SAFE_EXP, 2^SAFE_EXP); 0 inside it (and for 0)."""
    if max_abs == 0.0 or 2.0**-SAFE_EXP <= max_abs < 2.0**SAFE_EXP:
        return 0
    return -math.frexp(max_abs)[1]


def scale_tensor(t: torch.Tensor, e: int) -> torch.Tensor:
    """t·2^e in float64 (a new tensor unless e = 0 and t is float64 already). Exact except
    for entries that become subnormal (see module docstring)."""
    out = t.to(torch.float64)
    if e == 0:
        return out
    if out is t:
        out = t.clone()
    while e != 0:  # steps of at most 2^±1000: each factor is a normal float
        step = max(-1000, min(1000, e))
        out.mul_(2.0**step)
        e -= step
    return out


def unscale(x: float, e: int, upward: bool) -> float:
    """x·2^e rounded outward (``upward``: an upper bound, else a lower bound). Beyond the
    float range the bound becomes ±inf on the outer side and ±FLOAT_MAX on the inner side,
    both still valid bounds."""
    if e == 0 or x == 0.0 or not math.isfinite(x):
        return x
    try:
        y = math.ldexp(x, e)
    except OverflowError:
        if x > 0:
            return math.inf if upward else FLOAT_MAX
        return -FLOAT_MAX if upward else -math.inf
    if math.ldexp(y, -e) == x:
        return y
    return up(y) if upward else down(y)


def fraction_to_float(q: Fraction, upward: bool) -> float:
    """A float bound on an exact rational (upper when ``upward``); ±inf beyond the range."""
    try:
        x = float(q)  # correctly rounded
    except OverflowError:
        x = math.inf if q > 0 else -math.inf
    return up(x) if upward else down(x)


def sqrt_bounds(q_lo: Fraction, q_hi: Fraction) -> tuple[float, float]:
    """[lo, hi] with lo ≤ √q ≤ hi for every q in [q_lo, q_hi] (q_lo ≥ 0), scale-safe: the
    rationals are scaled by an even power of two before the float square root."""
    return _sqrt_one(q_lo, upward=False), _sqrt_one(q_hi, upward=True)


def _sqrt_one(q: Fraction, upward: bool) -> float:
    if q <= 0:
        return 0.0
    k = q.numerator.bit_length() - q.denominator.bit_length()
    half = k // 2
    scaled = q / Fraction(2) ** (2 * half)  # in [1/4, 4)
    x = fraction_to_float(scaled, upward)
    root = math.sqrt(x)
    root = up(root) if upward else down(root)
    return unscale(root, half, upward)


def sum_sq_upper(bound: torch.Tensor) -> Fraction:
    """An upper bound on Σ x_i² for every real x with |x_i| ≤ bound_i, from a finite
    non-negative float64 tensor ``bound``, without overflow: when the largest entry leaves
    the safe window the entries are first multiplied by 2^s (max·2^s in [1/2, 1)), exactly
    when s > 0 and otherwise by one rounded product each, moved up to the next float; the
    squares are then summed in float64 and enclosed by Lemma S (depth entries + 1, one
    product per entry) and the bound is scaled back by 2^-2s exactly."""
    top = float(bound.max()) if bound.numel() else 0.0
    if top == 0.0:
        return Fraction(0)
    s = scale_exponent(top)
    if s > 0:
        scaled = scale_tensor(bound, s)
    elif s < 0:  # s ≥ -1024: 2^s is a float, and the product rounds once
        scaled = vec_up(bound.to(torch.float64) * 2.0**s)
    else:
        scaled = bound.to(torch.float64)
    entries = scaled.numel()
    _, hi = sum_bounds_fraction(float((scaled * scaled).sum()), depth=entries + 1, ops=entries)
    return hi * Fraction(2) ** (-2 * s)


def exact_sum_bounds(values: torch.Tensor) -> tuple[float, float]:
    """[lo, hi] around the exact sum of a 1-D float tensor: values are scaled by a power of
    two into [−1, 1] (rounding at most 2⁻¹⁰⁷⁴ each) and summed by ``math.fsum`` (correctly
    rounded), then the bounds are scaled back outward."""
    v = values.detach().to(dtype=torch.float64, device="cpu")
    if v.numel() == 0:
        return 0.0, 0.0
    m = float(v.abs().max())
    if m == 0.0:
        return 0.0, 0.0
    e = -math.frexp(m)[1]
    scaled = scale_tensor(v, e).tolist()
    total = math.fsum(scaled)
    slack = 0.0 if e >= 0 else up(len(scaled) * 2.0**-1074)
    lo, hi = down(down(total) - slack), up(up(total) + slack)
    return unscale(lo, -e, upward=False), unscale(hi, -e, upward=True)


def vec_up(t: torch.Tensor) -> torch.Tensor:
    """Elementwise next float above (float64 tensors)."""
    return torch.nextafter(t, torch.full_like(t, math.inf))


def vec_down(t: torch.Tensor) -> torch.Tensor:
    """Elementwise next float below (float64 tensors)."""
    return torch.nextafter(t, torch.full_like(t, -math.inf))


def safe_norm(v: torch.Tensor) -> torch.Tensor:
    """‖v‖₂ as a 0-d tensor on v's device without overflow or underflow (an estimate: the
    division by max|v| rounds). No host synchronisation."""
    m = v.abs().amax()
    scale = torch.where(m > 0, m, torch.ones_like(m))
    return torch.linalg.vector_norm(v / scale) * scale


def require_gradual_underflow() -> None:
    """Raise when this thread's CPU flushes subnormal numbers (``torch.set_flush_denormal``,
    fast-math libraries): the underflow terms assume IEEE gradual underflow. The CPU is
    probed whatever the tensors' device, since the bounds' scalar arithmetic runs there;
    CUDA has no flush-to-zero mode for float64."""
    # bit patterns, not float comparisons: denormals-are-zero also changes comparisons
    probe = torch.tensor([2, 1 << 52], dtype=torch.int64).view(torch.float64)  # 2^-1073, 2^-1022
    got = (probe * torch.tensor([0.5, 0.5], dtype=torch.float64)).view(torch.int64).tolist()
    if got != [1, 1 << 51] or (TINY * 0.5).hex() != "0x0.8000000000000p-1022":
        raise RuntimeError(
            "the CPU flushes subnormal numbers to zero (torch.set_flush_denormal(True) or a "
            "fast-math library): certified bounds need IEEE gradual underflow; call "
            "torch.set_flush_denormal(False) first"
        )
