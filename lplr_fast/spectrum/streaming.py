"""Eigenvalue bounds of a symmetric matrix fed tile by tile, never stored.

``StreamingBounds`` accumulates, per tile (one pass each, C++ on the CPU): the trace, the
squared Frobenius norm, the diagonal's min and max, and the Gershgorin row sums. From them it
gives rigorous (rounding-inflated) brackets:

* λ_min ≥ Gershgorin lower end min_i (a_ii − Σ_{j≠i} |a_ij|), and ≥ 0 when the matrix is
  declared PSD (an NTK is J Jᵀ); with per-layer parts fed too, the layer-additivity bound
  λ_min(Σ_l Θ_l) ≥ Σ_l λ_min(Θ_l) ≥ Σ_l max(0, Gershgorin_l) (each Θ_l = J_l J_lᵀ is PSD);
* λ_min ≤ min_i a_ii (a Rayleigh quotient eᵢᵀAeᵢ) and ≤ tr A / N;
* λ_max ≥ max_i a_ii, ≥ tr A / N and, for PSD, ≥ ‖A‖_F / √N;
* λ_max ≤ Gershgorin upper end, ≤ ‖A‖_F, and for PSD ≤ tr A.

Tiles: ``update(rows, cols, tile)`` with ``rows``/``cols`` slices of samples and ``tile`` a
2-D block or an (r, c, k, k) NTK block (read sample-major, like :func:`eig_bounds`). With
``upper=True`` (what ``ntk_blocks(model, x)`` yields) only tiles on or above the diagonal are
fed and off-diagonal ones count for their mirror too; with ``upper=False`` every tile is fed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .bounds import SpectrumBounds
from .certify import UNIT_ROUNDOFF
from .native import tile_stats


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


@dataclass
class _Accumulator:
    n: int
    trace: float = 0.0
    sumsq: float = 0.0
    abs_sum: float = 0.0  # Σ|a_ij| fed, for the rounding allowance of the sums
    diag: torch.Tensor | None = None
    radius: torch.Tensor | None = None
    covered: int = 0

    def __post_init__(self) -> None:
        self.diag = torch.full((self.n,), math.nan, dtype=torch.float64)
        self.radius = torch.zeros(self.n, dtype=torch.float64)


class StreamingBounds:
    """Accumulates bounds on the extreme eigenvalues of a symmetric (N × N) matrix from its
    tiles; N = samples × outputs per sample.

    Args:
        n: number of samples (rows of the kernel in sample units).
        upper: tiles on or above the diagonal only (mirror implied), or all tiles.
        psd: the matrix is positive semi-definite by construction (an NTK); enables the
            λ_min ≥ 0 and layer-additivity bounds and the PSD-only λ_max bounds. Those hold
            for the exact kernel J Jᵀ; a stored floating-point NTK can differ from it by its
            own rounding (use psd=False for bounds on the stored numbers alone).
        per_layer: when fed by ``empirical_ntk`` / ``ntk_blocks``, also accumulate every
            module's part (for :meth:`layer_additivity_lower`).
    """

    def __init__(
        self, n: int, *, upper: bool = True, psd: bool = True, per_layer: bool = False
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n}")
        self.n, self.upper, self.psd, self.per_layer = int(n), upper, psd, per_layer
        self.k: int | None = None
        self._total: _Accumulator | None = None
        self._layers: dict[str, _Accumulator] = {}
        self.tiles = 0

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

    def _acc(self, layer: str | None, k: int) -> _Accumulator:
        if self.k is None:
            self.k = k
        elif k != self.k:
            raise ValueError(f"tile has {k} outputs per sample, earlier tiles had {self.k}")
        if layer is None:
            if self._total is None:
                self._total = _Accumulator(self.n * k)
            return self._total
        if layer not in self._layers:
            self._layers[layer] = _Accumulator(self.n * k)
        return self._layers[layer]

    def update(
        self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None
    ) -> None:
        """Feed one tile Θ(rows, cols) of the total (``layer=None``) or of one layer's part."""
        if not torch.is_tensor(tile) or not tile.is_floating_point():
            raise TypeError("tile must be a floating-point tensor")
        if rows.start is None or rows.stop is None or cols.start is None or cols.stop is None:
            raise ValueError("rows and cols must be slices with explicit start and stop")
        if not (0 <= rows.start < rows.stop <= self.n and 0 <= cols.start < cols.stop <= self.n):
            raise ValueError(f"tile ({rows}, {cols}) lies outside a {self.n}-sample kernel")
        t2, k = _as_2d(tile.detach())
        if t2.shape != ((rows.stop - rows.start) * k, (cols.stop - cols.start) * k):
            raise ValueError(f"tile shape {tuple(tile.shape)} does not match ({rows}, {cols})")
        mirrored = self.upper and rows != cols
        if self.upper and cols.start < rows.start:
            raise ValueError("with upper=True only tiles on or above the diagonal may be fed")
        acc = self._acc(layer, k)
        r0, c0 = rows.start * k, cols.start * k
        stats = tile_stats(t2, r0, c0)
        if stats.nonfinite:
            raise ValueError(f"tile ({rows}, {cols}) contains {stats.nonfinite} NaN/Inf entries")
        weight = 2.0 if mirrored else 1.0
        acc.sumsq += weight * stats.sumsq
        acc.abs_sum += weight * (float(stats.row_abs.sum()) + abs(stats.diag_sum))
        acc.trace += stats.diag_sum
        assert acc.diag is not None and acc.radius is not None
        acc.radius[r0 : r0 + t2.shape[0]] += stats.row_abs
        if mirrored:
            acc.radius[c0 : c0 + t2.shape[1]] += stats.col_abs
        lo, hi = max(r0, c0), min(r0 + t2.shape[0], c0 + t2.shape[1])
        if lo < hi:  # the tile crosses the diagonal
            acc.diag[lo:hi] = t2.diagonal(offset=c0 - r0).double().cpu()
        acc.covered += int(t2.numel()) * (2 if mirrored else 1)
        if layer is None:
            self.tiles += 1

    # -- results ---------------------------------------------------------------------------
    def _complete(self, acc: _Accumulator | None, what: str) -> _Accumulator:
        if acc is None:
            raise ValueError(f"no tiles of {what} were fed")
        if acc.covered != acc.n * acc.n:
            raise ValueError(
                f"{what}: tiles covered {acc.covered} of {acc.n * acc.n} entries; feed every "
                "tile (upper=True: those on or above the diagonal) before asking for bounds"
            )
        return acc

    def _slack(self, acc: _Accumulator) -> float:
        """Rounding allowance of the accumulated float64 sums (γ_N · Σ|terms|, inflated)."""
        return 2.0 * (acc.n + 2) * UNIT_ROUNDOFF * acc.abs_sum

    @property
    def trace(self) -> float:
        return self._complete(self._total, "the kernel").trace

    @property
    def frobenius(self) -> float:
        return math.sqrt(self._complete(self._total, "the kernel").sumsq)

    @property
    def diagonal_min(self) -> float:
        return float(self._complete(self._total, "the kernel").diag.min())  # type: ignore[union-attr]

    @property
    def diagonal_max(self) -> float:
        return float(self._complete(self._total, "the kernel").diag.max())  # type: ignore[union-attr]

    def gershgorin(self, layer: str | None = None) -> tuple[float, float]:
        """Gershgorin interval [min_i (a_ii − r_i), max_i (a_ii + r_i)] holding the spectrum."""
        acc = self._complete(
            self._total if layer is None else self._layers.get(layer), layer or "the kernel"
        )
        assert acc.diag is not None and acc.radius is not None
        slack = self._slack(acc)
        lo = float((acc.diag - acc.radius).min()) - slack
        hi = float((acc.diag + acc.radius).max()) + slack
        return lo, hi

    @property
    def layers(self) -> list[str]:
        return sorted(self._layers)

    def layer_additivity_lower(self) -> float:
        """Σ_l max(0, Gershgorin lower end of Θ_l) ≤ λ_min(Σ_l Θ_l) (needs psd=True and per-layer
        parts fed with ``layer=``)."""
        if not self.psd:
            raise ValueError("the layer-additivity bound needs psd=True (every part J_l J_lᵀ)")
        if not self._layers:
            raise ValueError("no per-layer parts were fed (update(..., layer=name))")
        return sum(max(0.0, self.gershgorin(name)[0]) for name in self._layers)

    def bounds(self) -> SpectrumBounds:
        """The brackets listed in the module docstring, all rigorous (certified=True)."""
        acc = self._complete(self._total, "the kernel")
        assert acc.diag is not None
        size, slack = acc.n, self._slack(acc)
        g_lo, g_hi = self.gershgorin()
        fro = math.sqrt(acc.sumsq) * (1 + 4 * UNIT_ROUNDOFF) + math.sqrt(slack)
        lo_min = g_lo
        if self.psd:
            lo_min = max(lo_min, 0.0)
            if self._layers:
                lo_min = max(lo_min, self.layer_additivity_lower())
        mean = acc.trace / size
        hi_min = min(float(acc.diag.min()), mean + slack / size)
        lo_max = max(float(acc.diag.max()), mean - slack / size)
        hi_max = min(g_hi, fro)
        if self.psd:
            lo_max = max(lo_max, math.sqrt(max(acc.sumsq - slack, 0.0) / size))
            hi_max = min(hi_max, acc.trace + slack)
        return SpectrumBounds(
            lo_min, hi_min, lo_max, hi_max, True, True, "streaming", 0, 0.0, size,
            slack, slack,
        )  # fmt: skip
