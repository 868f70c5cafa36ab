"""Eigenvalue bounds of a symmetric matrix fed tile by tile, never stored.

``StreamingBounds`` accumulates, per tile (one pass each, C++ on the CPU), rigorous
enclosures of: the squared Frobenius norm (exact rationals, Lemma S of ``rounding.py`` per
tile), the diagonal (stored exactly), the Gershgorin row sums (float64, in units of a
running power of two) and, for diagonal blocks, the asymmetry. What it certifies are the
eigenvalues of S = (M + Mᵀ)/2, where M is the matrix the tiles assemble (``upper=True``:
tiles on or above the diagonal plus the mirror images of those strictly above it; for an
exactly symmetric kernel S = M). From them:

* λ_min ≥ Gershgorin lower end min_i (s_ii − r_i), r_i = Σ_{j≠i} |s_ij| ≤ (Σ_{j≠i} |m_ij| +
  Σ_{j≠i} |m_ji|)/2; ≥ 0 when the matrix is declared PSD; with per-layer parts fed too,
  λ_min(S) ≥ Σ_l λ_min(S_l) − ‖M − Σ_l M_l‖_F ≥ Σ_l max(0, Gershgorin_l) − ‖R‖_F (each part
  declared PSD; R, the rounding of the total against the sum of its parts, is enclosed
  tile by tile);
* λ_min ≤ min_i s_ii (a Rayleigh quotient eᵢᵀSeᵢ) and ≤ tr S / N;
* λ_max ≥ max_i s_ii, ≥ tr S / N and, for PSD with ``upper=True``, ≥ ‖S‖_F / √N with
  ‖S‖_F² = ‖M‖_F² − ‖M − Mᵀ‖_F²/4 (the asymmetry of M lives in its diagonal blocks);
* λ_max ≤ Gershgorin upper end, ≤ ‖S‖_F ≤ ‖M‖_F, and for PSD ≤ tr S.

``psd=True`` is a promise that S (and each per-layer part) is positive semi-definite; the
PSD bounds are certified for matrices that keep it. A floating-point NTK J Jᵀ can miss it
by its own rounding: use psd=False for bounds on the stored numbers alone.

Every scalar is rounded outward; a tile whose largest entry leaves [2^-256, 2^256) is
scaled by a power of two before its reductions, so entries anywhere in the float64 range
give valid bounds (an end beyond the range becomes ±inf on its outer side).

Tiles: ``update(rows, cols, tile)`` with ``rows``/``cols`` slices of samples and ``tile`` a
2-D block or an (r, c, k, k) NTK block (read sample-major, like :func:`eig_bounds`), a
tensor or numpy array. With ``upper=True`` (what ``ntk_blocks(model, x)`` yields) every tile
is a diagonal block (rows == cols) or lies strictly above the diagonal; with ``upper=False``
any tiles. Tiles must not overlap, and bounds are given only once they cover the matrix
exactly (``coverage.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .bounds import SpectrumBounds
from .coverage import TileCoverage
from .inputs import as_real_tensor, nonfinite_error
from .native import tile_stats
from .rounding import (
    TINY,
    UNIT_ROUNDOFF,
    down,
    exact_sum_bounds,
    gamma_up,
    require_gradual_underflow,
    scale_exponent,
    scale_tensor,
    sqrt_bounds,
    sum_bounds_fraction,
    up,
    vec_up,
)


def _as_2d(tile: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(2-D tile, outputs per sample k) from a 2-D or (r, c, k, k) tile."""
    if tile.dim() == 4:
        r, c, k, k2 = tile.shape
        if k != k2:
            raise ValueError(f"a 4-D tile must have shape (r, c, k, k), got {tuple(tile.shape)}")
        return tile.permute(0, 2, 1, 3).reshape(r * k, c * k), k
    if tile.dim() != 2:
        raise ValueError(
            f"tile must be 2-D or an (r, c, k, k) NTK block, got shape {tuple(tile.shape)}; "
            "compute='diagonal' tiles hold k separate kernels: feed each [:, :, c] instead"
        )
    return tile, 1


def _pow2(e: int) -> Fraction:
    return Fraction(2) ** e


@dataclass
class _Accumulator:
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

    def raise_exponent(self, needed: int) -> None:
        """Make the radius units at least 2^needed (rescaling the stored radii)."""
        if self.exp is None:
            self.exp = needed
        elif needed > self.exp:
            self.rad = scale_tensor(self.rad, self.exp - needed)
            self.exp = needed
            self.rad_events += 2

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
class _Pending:
    """The latest total tile and the running difference to its parts (per-layer mode)."""

    key: tuple[int, int, int, int]
    exponent: int  # residual and abs sums are in units 2^-exponent
    mirrored: bool
    residual: torch.Tensor
    abs_sum: torch.Tensor
    layers: set[str] = field(default_factory=set)

    def frob_sq_upper(self) -> Fraction:
        """‖total − Σ parts‖_F² ≤ this (exact difference; see ``StreamingBounds``)."""
        count = len(self.layers)
        g = up(gamma_up(max(count, 1)) * up(1.0 + 2.0 * count * UNIT_ROUNDOFF))
        scaling = up((count + 1) * 2.0**-1074)
        bound = vec_up(vec_up(self.residual.abs() + vec_up(self.abs_sum * g)) + scaling)
        if not bool(torch.isfinite(bound).all()):
            return Fraction(-1)  # unbounded
        entries = bound.numel()
        _, hi = sum_bounds_fraction(float((bound * bound).sum()), depth=entries + 1, ops=entries)
        hi *= _pow2(-2 * self.exponent)
        return 2 * hi if self.mirrored else hi


@dataclass
class TileRecord:
    """What one accepted tile added to its matrix's enclosures (see ``StreamingBounds``):
    ``key`` (r0, r1, c0, c1) in samples, ``rows``/``cols`` the tile's 2-D size, ``diag``
    its exact diagonal entries, ``sumsq`` / ``skew`` exact rationals, ``radii`` the row and
    column abs sums in tile units with (max_abs, units, lossy), None for an all-zero tile."""

    layer: str | None
    k: int
    key: tuple[int, int, int, int]
    rows: int
    cols: int
    mirrored: bool
    diagonal_block: bool
    diag: torch.Tensor | None
    sumsq: tuple[Fraction, Fraction] = (Fraction(0), Fraction(0))
    skew: Fraction = Fraction(0)
    radii: tuple[torch.Tensor, torch.Tensor, float, int, bool] | None = None


@dataclass
class StreamingExport:
    """A stream's exact statistics (``StreamingBounds.export``): its settings, its tile
    records, ‖total − Σ parts‖_F² ≤ ``residual_sq`` over its tiles (−1: unbounded)."""

    n: int
    upper: bool
    psd: bool
    per_layer: bool
    records: list[TileRecord]
    residual_sq: Fraction
    additivity_broken: str | None


class StreamingBounds:
    """Accumulates bounds on the extreme eigenvalues of a symmetric (N × N) matrix from its
    tiles; N = samples × outputs per sample.

    Args:
        n: number of samples (rows of the kernel in sample units).
        upper: tiles on or above the diagonal only (mirror implied), or all tiles.
        psd: a promise that the (symmetric part of the) matrix is positive semi-definite (an
            NTK); enables the λ_min ≥ 0 and layer-additivity bounds and the PSD-only λ_max
            bounds. See the module docstring for what is certified.
        per_layer: when fed by ``empirical_ntk`` / ``ntk_blocks``, also accumulate every
            module's part (for :meth:`layer_additivity_lower`); parts of a tile must be fed
            right after the tile's total.
        record: also keep, per tile, the exact statistics it contributed (``export()``), so
            that streams fed with disjoint sets of tiles (e.g. by several processes) can be
            merged by :meth:`merged` into exactly the stream fed with all of them.
    """

    def __init__(
        self,
        n: int,
        *,
        upper: bool = True,
        psd: bool = True,
        per_layer: bool = False,
        record: bool = False,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n!r}")
        self.n, self.upper, self.psd, self.per_layer = int(n), upper, psd, per_layer
        self.k: int | None = None
        self._total: _Accumulator | None = None
        self._layers: dict[str, _Accumulator] = {}
        self._pending: _Pending | None = None
        self._residual_sq = Fraction(0)  # finished tiles' ‖total − Σ parts‖_F²
        self._additivity_broken: str | None = None
        self.tiles = 0
        self._records: list[TileRecord] | None = [] if record else None

    def expect(self, *, n1: int, n2: int, compute: str, symmetric: bool) -> None:
        """Called by the NTK tile stream before its first tile: it must be the upper triangle
        of this n-sample kernel (x2=None, compute "full" or "trace")."""
        if not symmetric or compute == "diagonal" or not self.upper:
            raise ValueError(
                "bounds= needs the symmetric kernel (x2=None), compute 'full' or 'trace', and "
                "a StreamingBounds(upper=True)"
            )
        if n1 != self.n:
            raise ValueError(f"bounds was made for n={self.n} samples, x1 has {n1}")

    # -- feeding ---------------------------------------------------------------------------
    def _acc(self, layer: str | None, k: int) -> _Accumulator:
        if self.k is not None and k != self.k:
            raise ValueError(f"tile has {k} outputs per sample, earlier tiles had {self.k}")
        if layer is None:
            if self._total is None:
                return _Accumulator(self.n, self.n * k, self.upper)
            return self._total
        if layer not in self._layers:
            return _Accumulator(self.n, self.n * k, self.upper)
        return self._layers[layer]

    def update(
        self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None
    ) -> None:
        """Feed one tile Θ(rows, cols) of the total (``layer=None``) or of one layer's part
        (every check is made before anything is recorded).

        Raises:
            TypeError / ValueError: a non-float tile, a bad shape, NaN/Inf entries, a tile
                below the diagonal with ``upper=True``, or one overlapping an earlier tile.
        """
        t2, k = _as_2d(as_real_tensor(tile, "tile"))
        probe = self._acc(layer, k)
        r0s, r1s, c0s, c1s = probe.coverage.check(rows, cols)
        if t2.shape != ((r1s - r0s) * k, (c1s - c0s) * k):
            raise ValueError(f"tile shape {tuple(tile.shape)} does not match ({rows}, {cols})")
        require_gradual_underflow()
        r0, c0 = r0s * k, c0s * k
        stats = tile_stats(t2, r0, c0)
        if stats.nonfinite:
            raise nonfinite_error(f"tile ({rows}, {cols})", stats.nonfinite)
        record = self._measure(t2, stats, layer, k, (r0s, r1s, c0s, c1s))
        # -- accepted: commit ------------------------------------------------------------
        self._commit(record, probe)
        if self._records is not None:
            self._records.append(record)
        if self.per_layer:
            self._track_residual(layer, record.key, t2, stats.max_abs, record.mirrored)

    def _measure(self, t2, stats, layer, k, key) -> TileRecord:
        """What one accepted tile adds to its accumulator (exact or outward-rounded)."""
        r0s, _, c0s, _ = key
        r0, c0 = r0s * k, c0s * k
        r, c = t2.shape
        diagonal_block = self.upper and r0s == c0s
        mirrored = self.upper and not diagonal_block
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
        rounded = r * c * TINY if e < 0 else 0.0  # entries made subnormal: ≤ 2⁻¹⁰⁷⁴ each
        weight = 2 if mirrored else 1
        s_lo, s_hi = sum_bounds_fraction(stats.sumsq, depth=r * c, ops=r * c)
        s_lo, s_hi = max(Fraction(0), s_lo - Fraction(rounded)), s_hi + Fraction(rounded)
        record.sumsq = (weight * s_lo * _pow2(2 * units), weight * s_hi * _pow2(2 * units))
        if diagonal_block:
            record.skew = _skew_sq_upper(t2, rounded) * _pow2(2 * units)
        record.radii = (stats.row_abs, stats.col_abs, stats.max_abs, units, e < 0)
        return record

    def _commit(self, record: TileRecord, acc: _Accumulator) -> None:
        self.k = record.k
        if record.layer is None:
            self._total = acc
            self.tiles += 1
        else:
            self._layers[record.layer] = acc
        acc.coverage.add(*record.key)
        r0, c0 = record.key[0] * record.k, record.key[2] * record.k
        if record.diag is not None:
            lo = max(r0, c0)
            acc.diag[lo : lo + record.diag.numel()] = record.diag
        if record.radii is None:  # an all-zero tile
            return
        acc.sumsq = (acc.sumsq[0] + record.sumsq[0], acc.sumsq[1] + record.sumsq[1])
        acc.skew_hi += record.skew
        row_abs, col_abs, max_abs, units, lossy = record.radii
        r, c = record.rows, record.cols
        top = math.frexp(max_abs)[1]  # entries < 2^top in tile units
        acc.raise_exponent(units + top + acc.size.bit_length() + 1)
        shift = units - (acc.exp or 0)
        rows = scale_tensor(row_abs, shift)
        cols = scale_tensor(col_abs, shift)
        if record.mirrored:  # the tile and its mirror image
            acc.rad[r0 : r0 + r] += rows
            acc.rad[c0 : c0 + c] += cols
        elif record.diagonal_block:
            acc.rad[r0 : r0 + r] += (rows + cols) * 0.5
        else:  # full mode: S's radius ≤ (row sum + column sum) / 2
            acc.rad[r0 : r0 + r] += rows * 0.5
            acc.rad[c0 : c0 + c] += cols * 0.5
        acc.rad_events += 6 + ((r + c) if lossy else 0)

    # -- merging streams fed with disjoint tiles -----------------------------------------
    def export(self) -> StreamingExport:
        """This stream's exact per-tile statistics (needs ``record=True``): picklable, for
        :meth:`merged`."""
        if self._records is None:
            raise ValueError("export() needs a StreamingBounds(..., record=True)")
        residual = self._residual_sq
        if residual >= 0 and self._pending is not None:
            pending = self._pending.frob_sq_upper()
            residual = Fraction(-1) if pending < 0 else residual + pending
        return StreamingExport(
            self.n, self.upper, self.psd, self.per_layer, list(self._records), residual,
            self._additivity_broken,
        )  # fmt: skip

    @classmethod
    def merged(cls, parts: list[StreamingExport]) -> StreamingBounds:
        """The stream fed with the union of the parts' tiles, in row-major tile order (the
        order of ``ntk_blocks``): bitwise the same bounds as one stream fed with all tiles in
        that order. Parts must agree on n / upper / psd / per_layer; tiles fed to two parts
        (overlaps) are refused, and bounds need the union to cover the matrix."""
        if not parts:
            raise ValueError("merged() needs at least one exported stream")
        first = parts[0]
        for part in parts[1:]:
            if (part.n, part.upper, part.psd, part.per_layer) != (
                first.n, first.upper, first.psd, first.per_layer,
            ):  # fmt: skip
                raise ValueError(
                    "the streams to merge differ in n / upper / psd / per_layer: "
                    f"{(first.n, first.upper, first.psd, first.per_layer)} vs "
                    f"{(part.n, part.upper, part.psd, part.per_layer)}"
                )
        out = cls(first.n, upper=first.upper, psd=first.psd, per_layer=first.per_layer)
        records = sorted(
            (rec for part in parts for rec in part.records), key=lambda rec: rec.key[::2]
        )  # stable: a tile's parts stay after its total
        for rec in records:
            acc = out._acc(rec.layer, rec.k)
            acc.coverage.check(slice(*rec.key[:2]), slice(*rec.key[2:]))
            out._commit(rec, acc)
        residuals = [part.residual_sq for part in parts]
        out._residual_sq = Fraction(-1) if min(residuals) < 0 else sum(residuals, Fraction(0))
        broken = [part.additivity_broken for part in parts if part.additivity_broken]
        out._additivity_broken = broken[0] if broken else None
        return out

    def _track_residual(self, layer, key, t2, max_abs, mirrored) -> None:
        """Per-layer mode: enclose ‖total − Σ parts‖_F tile by tile (parts right after
        their total), for the layer-additivity bound."""
        if layer is None:
            self._finish_pending()
            e = scale_exponent(max_abs)
            scaled = scale_tensor(t2, e)
            self._pending = _Pending(key, e, mirrored, scaled.clone(), scaled.abs())
            return
        pending = self._pending
        if pending is None or pending.key != key or layer in pending.layers:
            self._additivity_broken = (
                f"the part of layer {layer!r} for tile {key} was not fed right after that "
                "tile's total"
            )
            return
        part = scale_tensor(t2, pending.exponent)
        pending.residual -= part
        pending.abs_sum += part.abs()
        pending.layers.add(layer)

    def _finish_pending(self) -> None:
        if self._pending is not None:
            bound = self._pending.frob_sq_upper()
            self._residual_sq = (
                Fraction(-1) if bound < 0 or self._residual_sq < 0 else (self._residual_sq + bound)
            )
            self._pending = None

    # -- results ---------------------------------------------------------------------------
    def _complete(self, acc: _Accumulator | None, what: str) -> _Accumulator:
        if acc is None:
            raise ValueError(f"no tiles of {what} were fed")
        if not acc.coverage.complete:
            raise ValueError(
                f"{what}: {acc.coverage.describe()}; feed every tile (upper=True: those on or "
                "above the diagonal) before asking for bounds"
            )
        return acc

    def _kernel(self) -> _Accumulator:
        return self._complete(self._total, "the kernel")

    @property
    def trace(self) -> float:
        """tr S (rounded to nearest; :meth:`trace_bounds` encloses it)."""
        lo, hi = self.trace_bounds()
        return lo if lo == hi else 0.5 * lo + 0.5 * hi

    def trace_bounds(self) -> tuple[float, float]:
        return exact_sum_bounds(self._kernel().diag)

    @property
    def frobenius(self) -> float:
        """‖M‖_F (midpoint of :meth:`frobenius_bounds`)."""
        lo, hi = self.frobenius_bounds()
        return 0.5 * lo + 0.5 * hi if math.isfinite(hi) else hi

    def frobenius_bounds(self) -> tuple[float, float]:
        """Certified [lo, hi] ∋ ‖M‖_F of the assembled matrix M."""
        acc = self._kernel()
        return sqrt_bounds(*acc.sumsq)

    def sym_frobenius_lower(self) -> float:
        """Certified lower bound on ‖S‖_F (upper=True; 0 otherwise: the asymmetry between
        mirror tiles is not seen in full mode)."""
        acc = self._kernel()
        if not self.upper:
            return 0.0
        return sqrt_bounds(max(Fraction(0), acc.sumsq[0] - acc.skew_hi / 4), Fraction(0))[0]

    def skew_frobenius_upper(self) -> float:
        """Certified upper bound on ‖M − Mᵀ‖_F (upper=True; inf in full mode)."""
        acc = self._kernel()
        return sqrt_bounds(Fraction(0), acc.skew_hi)[1] if self.upper else math.inf

    @property
    def diagonal_min(self) -> float:
        return float(self._kernel().diag.min())

    @property
    def diagonal_max(self) -> float:
        return float(self._kernel().diag.max())

    def gershgorin(self, layer: str | None = None) -> tuple[float, float]:
        """Certified Gershgorin interval [min_i (s_ii − r_i), max_i (s_ii + r_i)] ⊇ spec(S)."""
        acc = self._complete(
            self._total if layer is None else self._layers.get(layer),
            "the kernel" if layer is None else f"layer {layer!r}",
        )
        radius = acc.radius_upper()
        lo = torch.nextafter(acc.diag - radius, torch.tensor(-math.inf, dtype=torch.float64))
        hi = torch.nextafter(acc.diag + radius, torch.tensor(math.inf, dtype=torch.float64))
        return float(lo.min()), float(hi.max())

    @property
    def layers(self) -> list[str]:
        return sorted(self._layers)

    def layer_additivity_lower(self) -> float:
        """Σ_l max(0, Gershgorin lower end of S_l) − ‖M − Σ_l M_l‖_F ≤ λ_min(S) (needs psd=True,
        per_layer=True and every part fed right after its total tile)."""
        if not self.psd:
            raise ValueError("the layer-additivity bound needs psd=True (every part J_l J_lᵀ)")
        if not self._layers:
            raise ValueError("no per-layer parts were fed (update(..., layer=name))")
        if not self.per_layer:
            raise ValueError(
                "the layer-additivity bound needs StreamingBounds(per_layer=True), which "
                "checks that the parts add up to the total"
            )
        if self._additivity_broken:
            raise ValueError(f"no layer-additivity bound: {self._additivity_broken}")
        total = 0.0
        for name in self._layers:
            total = down(total + max(0.0, self.gershgorin(name)[0]))
        residual = self._residual_sq
        if residual >= 0 and self._pending is not None:
            pending = self._pending.frob_sq_upper()
            residual = Fraction(-1) if pending < 0 else residual + pending
        if residual < 0:
            return -math.inf
        return down(total - sqrt_bounds(Fraction(0), residual)[1])

    def bounds(self) -> SpectrumBounds:
        """The brackets listed in the module docstring, all rigorous (certified=True);
        ``margin_*`` are not used (NaN)."""
        acc = self._kernel()
        size = acc.size
        tr_lo, tr_hi = self.trace_bounds()
        g_lo, g_hi = self.gershgorin()
        fro_hi = self.frobenius_bounds()[1]
        d_min, d_max = float(acc.diag.min()), float(acc.diag.max())
        lo_min = g_lo
        if self.psd:
            lo_min = max(lo_min, 0.0)
            if self._layers and self.per_layer and not self._additivity_broken:
                lo_min = max(lo_min, self.layer_additivity_lower())
        hi_min = min(d_min, up(tr_hi / size))
        lo_max = max(d_max, down(tr_lo / size))
        hi_max = min(g_hi, fro_hi)
        if self.psd:
            lo_max = max(lo_max, _div_sqrt_down(self.sym_frobenius_lower(), size))
            hi_max = min(hi_max, tr_hi)
        return SpectrumBounds(
            lo_min, hi_min, lo_max, hi_max, True, True, "streaming", 0, 0.0, size,
        )  # fmt: skip


def _div_sqrt_down(x: float, size: int) -> float:
    """A lower bound on x / √size."""
    return down(x / up(math.sqrt(size)))


def _skew_sq_upper(t2: torch.Tensor, rounded: float) -> Fraction:
    """Upper bound on ‖T − Tᵀ‖_F² of the exact square tile (its entries moved by at most
    ``rounded``/(r·c) each by a scaling): Lemma S, depth r² + 3, r² products."""
    d = t2 - t2.T
    r2 = d.numel()
    total = float((d * d).sum())
    _, hi = sum_bounds_fraction(total, depth=r2 + 3, ops=r2)
    return hi + 8 * Fraction(rounded)
