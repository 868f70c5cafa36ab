"""Memory-bound reductions behind the eigenvalue bounds: the operators
``torch.ops.lplr.{tile_stats, square_stats, symv_upper, abs_quadratic}`` of ``lplr_fast._C``
(OpenMP kernels on CPU, device-generic ATen passes on CUDA; fixed summation order, so
repeated calls are bitwise identical), or the same quantities from PyTorch expressions when
the compiled module is unavailable.

All sums are accumulated in float64 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _backend


def _native_for(t: torch.Tensor) -> bool:
    """Whether the compiled operators can take ``t`` (its device is supported)."""
    return _backend.supports(t.device)


@dataclass(frozen=True)
class TileStats:
    """Reductions of one tile T = A[row0 : row0 + r, col0 : col0 + c] of a larger matrix A.

    ``nonfinite``: NaN/Inf entries; ``sumsq``: Σ t² (finite entries); ``max_abs``: max |t|;
    ``diag_sum``: Σ of the entries on A's diagonal; ``row_abs`` (r,) / ``col_abs`` (c,):
    Σ |t| along rows / columns leaving out A's diagonal (Gershgorin radii contributions)."""

    nonfinite: int
    sumsq: float
    max_abs: float
    diag_sum: float
    row_abs: torch.Tensor
    col_abs: torch.Tensor


def _diag_mask(r: int, c: int, row0: int, col0: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(row0, row0 + r, device=device)[:, None]
    cols = torch.arange(col0, col0 + c, device=device)[None, :]
    return rows == cols


def tile_stats(tile: torch.Tensor, row0: int, col0: int) -> TileStats:
    """One pass over a 2-D tile (float32/float64) placed at (row0, col0)."""
    if _native_for(tile):
        scalars, row_abs, col_abs = torch.ops.lplr.tile_stats(tile, int(row0), int(col0))
        bad, sumsq, max_abs, diag = scalars.tolist()
        return TileStats(int(bad), sumsq, max_abs, diag, row_abs.cpu(), col_abs.cpu())
    t = tile.double()
    finite = torch.isfinite(t)
    t = torch.where(finite, t, torch.zeros((), dtype=t.dtype, device=t.device))
    on_diag = _diag_mask(t.shape[0], t.shape[1], row0, col0, t.device)
    off = t.abs().masked_fill(on_diag, 0.0)
    return TileStats(
        int((~finite).sum()),
        float((t * t).sum()),
        float(t.abs().max()) if t.numel() else 0.0,
        float(t[on_diag].sum()),
        off.sum(dim=1).cpu(),
        off.sum(dim=0).cpu(),
    )


@dataclass(frozen=True)
class SquareStats:
    """One-pass reductions of a square matrix A: ``nonfinite`` entries, ``asym_fro`` =
    ‖A − Aᵀ‖_F, ``fro`` = ‖A‖_F, ``max_abs``, ``trace``, ``max_abs_diag`` and ``row_abs``
    (n,) = Σ_{j≠i} |a_ij| (float64, on the CPU)."""

    nonfinite: int
    asym_fro: float
    fro: float
    max_abs: float
    trace: float
    max_abs_diag: float
    row_abs: torch.Tensor


def square_stats(a: torch.Tensor) -> SquareStats:
    """One pass over a square 2-D float32/float64 matrix."""
    if _native_for(a):
        scalars, row_abs = torch.ops.lplr.square_stats(a)
        bad, asym2, fro2, max_abs, trace, max_diag = scalars.tolist()
        return SquareStats(int(bad), asym2**0.5, fro2**0.5, max_abs, trace, max_diag, row_abs.cpu())
    t = a.double()
    finite = torch.isfinite(t)
    t = torch.where(finite, t, torch.zeros((), dtype=t.dtype, device=t.device))
    diag = t.diagonal()
    return SquareStats(
        int((~finite).sum()),
        float((t - t.T).norm()),
        float(t.norm()),
        float(t.abs().max()),
        float(diag.sum()),
        float(diag.abs().max()),
        (t.abs().sum(dim=1) - diag.abs()).cpu(),
    )


def symv_upper(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """S v with S the symmetric matrix holding the upper triangle of ``a`` (n, n); the strict
    lower triangle is not read. ``v``: (n,) or (n, m), same dtype as ``a``."""
    if _native_for(a) and v.device == a.device and v.dtype == a.dtype:
        return torch.ops.lplr.symv_upper(a, v)
    upper = torch.triu(a)
    return upper @ v + torch.triu(a, 1).T @ v


def abs_quadratic(a: torch.Tensor, v: torch.Tensor) -> float:
    """|v|ᵀ|A||v| in float64 for a square ``a`` and a vector ``v`` (no |A| is formed on CPU)."""
    if _native_for(a) and v.device == a.device:
        return float(torch.ops.lplr.abs_quadratic(a, v))
    w = v.double().abs()
    return float(w @ (a.double().abs() @ w))
