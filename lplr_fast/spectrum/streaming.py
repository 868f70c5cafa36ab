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
give valid bounds (an end beyond the range becomes ±inf on its outer side). All reductions
run in float64 whatever the tile's dtype (float32 entries widened exactly, float16/bfloat16
with a ``WidenedInputWarning``), so one float64 rounding analysis covers every dtype
(``accumulate.py``). A tile is recorded whole or not at all: everything that can fail is
computed before anything is stored, so a tile whose update raises leaves no trace. Results
refuse a CPU in flush-to-zero mode even when it was switched on after the tiles.

Tiles: ``update(rows, cols, tile)`` with ``rows``/``cols`` slices of samples and ``tile`` a
2-D block or an (r, c, k, k) NTK block (read sample-major, like :func:`eig_bounds`), a
tensor or numpy array. With ``upper=True`` (what ``ntk_blocks(model, x)`` yields) every tile
is a diagonal block (rows == cols) or lies strictly above the diagonal; with ``upper=False``
any tiles. Tiles must not overlap, and bounds are given only once they cover the matrix
exactly (``coverage.py``).

Streams fed with disjoint sets of tiles (several processes: ``lplr_fast.distributed``) merge
exactly: with ``record=True`` a stream keeps each accepted tile's :class:`TileRecord`
(``export()``), and :meth:`StreamingBounds.merged` replays the records of all parts through
the same plan-and-commit steps as ``update`` (so the same certificates, and bitwise the same
numbers as one stream fed the tiles in that order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from . import residual as layer_residual
from .accumulate import Accumulator, TileRecord, TileShare, measure_tile, plan_share
from .bounds import SpectrumBounds
from .inputs import as_real_tensor, nonfinite_error
from .native import tile_stats
from .rounding import (
    down,
    exact_sum_bounds,
    require_gradual_underflow,
    sqrt_bounds,
    up,
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


__all__ = ["StreamingBounds", "StreamingExport", "TileRecord"]


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
        self._total: Accumulator | None = None
        self._layers: dict[str, Accumulator] = {}
        self._pending: layer_residual.PendingResidual | None = None
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
    def _acc(self, layer: str | None, k: int) -> Accumulator:
        if self.k is not None and k != self.k:
            raise ValueError(f"tile has {k} outputs per sample, earlier tiles had {self.k}")
        if layer is None:
            if self._total is None:
                return Accumulator(self.n, self.n * k, self.upper)
            return self._total
        if layer not in self._layers:
            return Accumulator(self.n, self.n * k, self.upper)
        return self._layers[layer]

    def update(
        self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None
    ) -> None:
        """Feed one tile Θ(rows, cols) of the total (``layer=None``) or of one layer's part.
        Everything that can fail is computed before anything is recorded: a tile that
        raises leaves no trace.

        Raises:
            TypeError / ValueError: a non-float tile, a bad shape, NaN/Inf entries, a tile
                below the diagonal with ``upper=True``, or one overlapping an earlier tile.
        """
        t2, k = _as_2d(as_real_tensor(tile, "tile"))
        acc = self._acc(layer, k)
        rect = acc.coverage.check(rows, cols)
        r0s, r1s, c0s, c1s = rect
        if t2.shape != ((r1s - r0s) * k, (c1s - c0s) * k):
            raise ValueError(f"tile shape {tuple(tile.shape)} does not match ({rows}, {cols})")
        require_gradual_underflow()
        stats = tile_stats(t2, r0s * k, c0s * k)
        if stats.nonfinite:
            raise nonfinite_error(f"tile ({rows}, {cols})", stats.nonfinite)
        record = measure_tile(t2, stats, layer, k, rect, self.upper)
        share = plan_share(acc, record)
        record_residual = self._residual_step(layer, rect, t2, stats.max_abs, record.mirrored)
        # -- accepted: record (nothing below can fail) -----------------------------------
        self._commit(share, acc)
        if self._records is not None:
            self._records.append(record)
        record_residual()

    def _commit(self, share: TileShare, acc: Accumulator) -> None:
        """Adopt ``acc`` and add the planned share to it (cannot fail)."""
        rec = share.record
        self.k = rec.k
        if rec.layer is None:
            self._total = acc
            self.tiles += 1
        else:
            self._layers[rec.layer] = acc
        share.commit(acc)

    def _residual_step(self, layer, rect, t2, max_abs, mirrored):
        """Per-layer mode: the (not yet applied) update of ‖total − Σ parts‖_F's enclosure
        (``residual.py``); parts must come right after their total."""
        if not self.per_layer:
            return lambda: None
        if layer is None:
            finished, pending = layer_residual.open_step(self._pending, rect, t2, max_abs, mirrored)

            def open_pending() -> None:
                self._residual_sq = layer_residual.add_bound(self._residual_sq, finished)
                self._pending = pending

            return open_pending
        step = layer_residual.part_step(self._pending, rect, layer, t2)
        if isinstance(step, str):
            return lambda: setattr(self, "_additivity_broken", self._additivity_broken or step)
        return step

    # -- merging streams fed with disjoint tiles -----------------------------------------
    def export(self) -> StreamingExport:
        """This stream's exact per-tile statistics (needs ``record=True``): picklable, for
        :meth:`merged`."""
        if self._records is None:
            raise ValueError("export() needs a StreamingBounds(..., record=True)")
        residual = self._residual_sq
        if self._pending is not None:
            residual = layer_residual.add_bound(residual, self._pending.frob_sq_upper())
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
            out._commit(plan_share(acc, rec), acc)
        residual = Fraction(0)
        for part in parts:
            residual = layer_residual.add_bound(residual, part.residual_sq)
        out._residual_sq = residual
        broken = [part.additivity_broken for part in parts if part.additivity_broken]
        out._additivity_broken = broken[0] if broken else None
        return out

    # -- results ---------------------------------------------------------------------------
    def _complete(self, acc: Accumulator | None, what: str) -> Accumulator:
        """``acc`` once it covers its matrix; every result passes here, so this is where
        the flush-to-zero mode is refused (it may have been switched on since the tiles)."""
        require_gradual_underflow()
        if acc is None:
            raise ValueError(f"no tiles of {what} were fed")
        if not acc.coverage.complete:
            raise ValueError(
                f"{what}: {acc.coverage.describe()}; feed every tile (upper=True: those on or "
                "above the diagonal) before asking for bounds"
            )
        return acc

    def _kernel(self) -> Accumulator:
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
            residual = layer_residual.add_bound(residual, self._pending.frob_sq_upper())
        if residual < 0:
            return -math.inf
        return down(total - sqrt_bounds(Fraction(0), residual)[1])

    def _additivity_available(self) -> bool:
        """Whether :meth:`layer_additivity_lower` has what it needs (every layer complete)."""
        return (
            self.per_layer
            and bool(self._layers)
            and not self._additivity_broken
            and all(acc.coverage.complete for acc in self._layers.values())
        )

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
            if self._additivity_available():
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
