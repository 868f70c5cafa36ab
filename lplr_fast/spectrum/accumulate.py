"""What one tile contributes to the enclosures of ``StreamingBounds`` (see ``streaming.py``
for the bounds they feed).

A tile is first measured into a :class:`TileRecord` (:func:`measure_tile`: everything that
depends on the tile alone), then planned against the accumulator it goes to
(:func:`plan_share`: the Gershgorin increments in the accumulator's current units); both may
raise and change nothing. :meth:`TileShare.commit` only adds numbers already computed, so a
tile that fails leaves no trace, and a record replayed into another stream
(``StreamingBounds.merged``) goes through the very same plan and commit. All arithmetic runs
in float64 whatever the tile's dtype: float32 entries are widened exactly, so the float64
rounding analysis below covers them.

Per tile T (r × c, placed at rows r0, columns c0 of the (N × N) matrix M):

* ‖T‖_F² from the float64 sum of squares of ``tile_stats``, enclosed by Lemma S of
  ``rounding.py`` (depth r·c, r·c products); a tile whose largest entry leaves
  [2^-256, 2^256) is scaled by 2^e into [1/2, 1) first, and entries made subnormal by the
  scaling move by ≤ 2⁻¹⁰⁷⁴ each, which moves ‖T‖_F² by at most r·c·TINY;
* for a diagonal block with ``upper=True``, ‖T − Tᵀ‖_F² from the float64 differences and
  squares (depth r² + 3, r² products; widened entries make the differences float64
  operations with no underflow error);
* the Gershgorin row sums of S = (M + Mᵀ)/2, in float64 units of a running power of two
  chosen so that no sum can overflow (``Accumulator.radius_upper`` bounds their rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .coverage import TileCoverage
from .native import TileStats, tile_stats
from .rounding import (
    TINY,
    UNIT_ROUNDOFF,
    scale_exponent,
    scale_tensor,
    sum_bounds_fraction,
    up,
    vec_up,
)

Rect = tuple[int, int, int, int]  # (r0, r1, c0, c1) in sample units


def pow2(e: int) -> Fraction:
    return Fraction(2) ** e


@dataclass
class Accumulator:
    """Enclosures for one matrix (the total or one layer's part), N = samples × k."""

    n_samples: int
    size: int
    upper: bool
    coverage: TileCoverage = field(init=False)
    diag: torch.Tensor = field(init=False)  # exact diagonal (NaN until fed)
    rad: torch.Tensor = field(init=False)  # Gershgorin radii of S in units 2^exp
    exp: int | None = None
    rad_events: int = 0  # bound on the rounding events (absolute errors) per radius
    sumsq: tuple[Fraction, Fraction] = (Fraction(0), Fraction(0))  # ‖M‖_F² ∈ [lo, hi]
    skew_hi: Fraction = Fraction(0)  # ‖M − Mᵀ‖_F² ≤ skew_hi (upper=True)

    def __post_init__(self) -> None:
        self.coverage = TileCoverage(self.n_samples, self.upper)
        self.diag = torch.full((self.size,), math.nan, dtype=torch.float64)
        self.rad = torch.zeros(self.size, dtype=torch.float64)

    def units_for(self, needed: int) -> tuple[int, torch.Tensor | None]:
        """The radius units 2^exp once a tile needing 2^needed is added, and the stored radii
        rescaled to them (None when the units do not change)."""
        if self.exp is None:
            return needed, None
        if needed <= self.exp:
            return self.exp, None
        return needed, scale_tensor(self.rad, self.exp - needed)

    def radius_upper(self) -> torch.Tensor:
        """Certified upper bounds on the radii (absolute units, float64; may hold inf)."""
        depth = self.size + self.coverage.tiles + 4
        if depth * UNIT_ROUNDOFF > 0.25:
            raise ValueError("kernel too large for the float64 rounding bounds")
        slack = up(2.0 * self.rad_events * TINY)
        factor = up(1.0 + 2.0 * depth * UNIT_ROUNDOFF)
        r = vec_up(vec_up(self.rad + slack) * factor)
        return vec_up(scale_tensor(r, self.exp or 0))


@dataclass
class TileRecord:
    """What one tile contributes, independently of the stream it is fed to (so records of
    tiles fed to several streams, e.g. by several processes, can be replayed into one:
    ``StreamingBounds.merged``). ``key`` (r0, r1, c0, c1) in samples, ``rows``/``cols`` the
    2-D size, ``diag`` the exact diagonal entries the tile holds (None if it holds none),
    ``sumsq`` / ``skew`` exact rationals, ``radii`` = (row abs sums, column abs sums,
    max |entry|, units, lossy) in tile units, None for an all-zero tile."""

    layer: str | None
    k: int
    key: Rect
    rows: int
    cols: int
    mirrored: bool
    diagonal_block: bool
    diag: torch.Tensor | None
    sumsq: tuple[Fraction, Fraction] = (Fraction(0), Fraction(0))
    skew: Fraction = Fraction(0)
    radii: tuple[torch.Tensor, torch.Tensor, float, int, bool] | None = None


def measure_tile(
    t2: torch.Tensor, stats: TileStats, layer: str | None, k: int, key: Rect, upper: bool
) -> TileRecord:
    """The record of the finite 2-D tile ``t2`` (``stats`` its reductions) covering ``key``
    with k outputs per sample (may raise; records nothing)."""
    r, c = t2.shape
    r0, c0 = key[0] * k, key[2] * k
    diagonal_block = upper and key[0] == key[2]
    mirrored = upper and not diagonal_block
    lo, hi = max(r0, c0), min(r0 + r, c0 + c)
    diag = None
    if lo < hi:  # the tile crosses the diagonal: keep it exactly
        diag = t2.diagonal(offset=r0 - c0).to(torch.float64).cpu().clone()
    record = TileRecord(layer, k, key, r, c, mirrored, diagonal_block, diag)
    if stats.max_abs == 0.0:
        return record
    e = scale_exponent(stats.max_abs)
    if e != 0:  # outside the safe window: reductions of t2·2^e instead
        t2 = scale_tensor(t2, e)
        stats = tile_stats(t2, r0, c0)
    units = -e  # the tile's value is t2·2^units (up to the rounding below)
    rounded = Fraction(r * c * TINY) if e < 0 else Fraction(0)  # entries made subnormal
    weight = 2 if mirrored else 1
    s_lo, s_hi = sum_bounds_fraction(stats.sumsq, depth=r * c, ops=r * c)
    s_lo, s_hi = max(Fraction(0), s_lo - rounded), s_hi + rounded
    record.sumsq = (weight * s_lo * pow2(2 * units), weight * s_hi * pow2(2 * units))
    if diagonal_block:
        record.skew = skew_sq_upper(t2, rounded) * pow2(2 * units)
    record.radii = (stats.row_abs, stats.col_abs, stats.max_abs, units, e < 0)
    return record


@dataclass
class TileShare:
    """A record's additions to one :class:`Accumulator` (in its current radius units), all
    computed already: :meth:`commit` cannot fail."""

    record: TileRecord
    exp: int | None = None  # radius units after this tile (None: nothing to add)
    rescaled: torch.Tensor | None = None  # the stored radii in the new units, if they change
    radii: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (start, increments)
    events: int = 0

    def commit(self, acc: Accumulator) -> None:
        """Record the share."""
        rec = self.record
        acc.coverage.add(*rec.key)
        if rec.diag is not None:
            start = max(rec.key[0], rec.key[2]) * rec.k
            acc.diag[start : start + len(rec.diag)] = rec.diag
        if self.exp is None:  # an all-zero tile
            return
        acc.sumsq = (acc.sumsq[0] + rec.sumsq[0], acc.sumsq[1] + rec.sumsq[1])
        acc.skew_hi += rec.skew
        if self.rescaled is not None:
            acc.rad = self.rescaled
            acc.rad_events += 2
        acc.exp = self.exp
        for start, increments in self.radii:
            acc.rad[start : start + len(increments)] += increments
        acc.rad_events += self.events


def plan_share(acc: Accumulator, record: TileRecord) -> TileShare:
    """The share of ``record`` in ``acc`` (may raise; changes nothing)."""
    share = TileShare(record)
    if record.radii is not None:
        _radii(share, acc, record)
    return share


def _radii(share: TileShare, acc: Accumulator, rec: TileRecord) -> None:
    row_abs, col_abs, max_abs, units, lossy = rec.radii  # type: ignore[misc]
    r, c = rec.rows, rec.cols
    r0, c0 = rec.key[0] * rec.k, rec.key[2] * rec.k
    top = math.frexp(max_abs)[1]  # entries < 2^top in tile units
    share.exp, share.rescaled = acc.units_for(units + top + acc.size.bit_length() + 1)
    shift = units - share.exp
    rows = scale_tensor(row_abs, shift)
    cols = scale_tensor(col_abs, shift)
    if rec.mirrored:  # the tile and its mirror image
        share.radii = [(r0, rows), (c0, cols)]
    elif rec.diagonal_block:
        share.radii = [(r0, (rows + cols) * 0.5)]
    else:  # full mode: S's radius ≤ (row sum + column sum) / 2
        share.radii = [(r0, rows * 0.5), (c0, cols * 0.5)]
    share.events = 6 + ((r + c) if lossy else 0)


def skew_sq_upper(t2: torch.Tensor, rounded: Fraction) -> Fraction:
    """Upper bound on ‖T − Tᵀ‖_F² of the exact square tile (its entries moved by at most
    ``rounded``/(r·c) each by a scaling): the differences and squares are formed in float64
    (float32 entries widened exactly: their squares cannot overflow or underflow there),
    then Lemma S with depth r² + 3 and r² products."""
    w = t2.to(torch.float64)
    d = w - w.T
    r2 = d.numel()
    total = float((d * d).sum())
    _, hi = sum_bounds_fraction(total, depth=r2 + 3, ops=r2)
    return hi + 8 * rounded
