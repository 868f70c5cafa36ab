"""Per-layer mode of ``StreamingBounds``: an enclosure of ‖M − Σ_l M_l‖_F (the rounding of
the total against the sum of its parts), tile by tile, for the layer-additivity bound.

Each total tile T opens a pending residual: T scaled by the power of two 2^e that brings
its largest entry into [1/2, 1) when it leaves the safe window, ``residual`` = T·2^e and
``abs_sum`` = |T·2^e|. Each part P_l of that tile, fed right after it, is scaled by the
same 2^e (rounding by ≤ 2⁻¹⁰⁷⁴ per entry when an entry becomes subnormal) and subtracted:
``residual`` ← fl(residual − P_l·2^e), ``abs_sum`` ← fl(abs_sum + |P_l·2^e|). With m parts
the exact difference satisfies, entrywise,

    |T − Σ P_l|·2^e ≤ |residual| + γ_m·(1 + 2mu)·abs_sum + (m + 1)·2⁻¹⁰⁷⁴

(each subtraction and addition rounds by u relative to a partial sum bounded by abs_sum),
and the squares of these bounds are summed by ``rounding.sum_sq_upper`` (scale-safe: parts
far larger than their total, which cancel, cannot overflow it). A bound that is not
finite (a part beyond the float range after scaling) makes the residual unbounded, and
the layer-additivity bound −inf: valid, merely useless.

Like a tile's share, every step that can fail runs before anything is recorded: the
``*_step`` functions return closures that only assign already computed values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .accumulate import Rect, pow2
from .rounding import (
    UNIT_ROUNDOFF,
    gamma_up,
    scale_exponent,
    scale_tensor,
    sum_sq_upper,
    up,
    vec_up,
)

UNBOUNDED = Fraction(-1)


@dataclass
class PendingResidual:
    """The latest total tile and the running difference to its parts."""

    key: Rect
    exponent: int  # residual and abs_sum are in units 2^-exponent
    mirrored: bool
    residual: torch.Tensor
    abs_sum: torch.Tensor
    layers: set[str] = field(default_factory=set)

    def frob_sq_upper(self) -> Fraction:
        """‖total − Σ parts‖_F² ≤ this (counting the mirror image), or UNBOUNDED."""
        count = len(self.layers)
        g = up(gamma_up(max(count, 1)) * up(1.0 + 2.0 * count * UNIT_ROUNDOFF))
        scaling = up((count + 1) * 2.0**-1074)
        bound = vec_up(vec_up(self.residual.abs() + vec_up(self.abs_sum * g)) + scaling)
        if not bool(torch.isfinite(bound).all()):
            return UNBOUNDED
        hi = sum_sq_upper(bound) * pow2(-2 * self.exponent)
        return 2 * hi if self.mirrored else hi


def add_bound(total: Fraction, bound: Fraction) -> Fraction:
    """Sum of two residual bounds (UNBOUNDED absorbs)."""
    return UNBOUNDED if total < 0 or bound < 0 else total + bound


def open_step(
    pending: PendingResidual | None, key: Rect, t2: torch.Tensor, max_abs: float, mirrored: bool
) -> tuple[Fraction, PendingResidual]:
    """A new total tile: (the finished bound of ``pending``, 0 if none; the new pending)."""
    finished = pending.frob_sq_upper() if pending is not None else Fraction(0)
    e = scale_exponent(max_abs)
    scaled = scale_tensor(t2, e).clone()
    return finished, PendingResidual(key, e, mirrored, scaled, scaled.abs())


def part_step(
    pending: PendingResidual | None, key: Rect, layer: str, t2: torch.Tensor
) -> Callable[[], None] | str:
    """A part of layer ``layer``: the commit closure, or why additivity is lost (the part
    did not follow its total)."""
    if pending is None or pending.key != key or layer in pending.layers:
        return (
            f"the part of layer {layer!r} for tile {key} was not fed right after that tile's total"
        )
    part = scale_tensor(t2, pending.exponent)
    residual = pending.residual - part
    abs_sum = pending.abs_sum + part.abs()

    def commit() -> None:
        pending.residual, pending.abs_sum = residual, abs_sum
        pending.layers.add(layer)

    return commit
