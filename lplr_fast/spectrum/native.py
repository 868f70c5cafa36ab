"""Memory-bound reductions behind the eigenvalue bounds: the operators
``torch.ops.lplr.{tile_stats, square_stats, symv_upper, abs_quadratic}`` of ``lplr_fast._C``
(OpenMP kernels on CPU, device-generic ATen passes on CUDA; fixed summation order, so
repeated calls are bitwise identical), or the same quantities from PyTorch expressions when
the compiled module is unavailable.

All sums are accumulated in float64 whatever the input dtype (float16/bfloat16 inputs are
widened to float64 first, which is exact). The results are plain floating-point sums: the
callers bound their rounding with Lemma S of ``rounding.py``, using the rounding depths
listed with each quantity (valid for the C++ kernels and the PyTorch expressions alike, in
any summation order). The inputs must be finite and scaled (``rounding.SAFE_EXP``) so that
no square or difference overflows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _backend

_NATIVE_DTYPES = (torch.float32, torch.float64)


def _native_for(t: torch.Tensor) -> bool:
    """Whether the compiled operators can take ``t`` (its device is supported)."""
    return _backend.supports(t.device)


def _widen(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float64 (exact); the kernels take float32/float64. Detached: the
    reductions are certified numbers, not differentiable functions of the matrix."""
    t = t.detach()
    return t if t.dtype in _NATIVE_DTYPES else t.to(torch.float64)


@dataclass(frozen=True)
class TileStats:
    """Reductions of one tile T = A[row0 : row0 + r, col0 : col0 + c] of a larger matrix A.

    ``nonfinite``: NaN/Inf entries; ``sumsq``: Σ t² (finite entries; depth ≤ r·c);
    ``max_abs``: max |t| (exact); ``diag_sum``: Σ of the entries on A's diagonal;
    ``row_abs`` (r,) / ``col_abs`` (c,): Σ |t| along rows / columns leaving out A's diagonal
    (depth ≤ c / ≤ r), float64 on the CPU."""

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
    """One pass over a 2-D tile placed at (row0, col0)."""
    tile = _widen(tile)
    if _native_for(tile):
        scalars, row_abs, col_abs = torch.ops.lplr.tile_stats(tile, int(row0), int(col0))
        bad, sumsq, max_abs, diag = scalars.tolist()  # one host synchronisation
        return TileStats(int(bad), sumsq, max_abs, diag, row_abs.cpu(), col_abs.cpu())
    t = tile.double()
    finite = torch.isfinite(t)
    t = torch.where(finite, t, torch.zeros((), dtype=t.dtype, device=t.device))
    on_diag = _diag_mask(t.shape[0], t.shape[1], row0, col0, t.device)
    off = t.abs().masked_fill(on_diag, 0.0)
    scalars = torch.stack(
        [
            (~finite).sum().double(),
            (t * t).sum(),
            t.abs().max() if t.numel() else t.new_zeros(()),
            t[on_diag].sum(),
        ]
    ).tolist()  # one host synchronisation
    return TileStats(
        int(scalars[0]),
        scalars[1],
        scalars[2],
        scalars[3],
        off.sum(dim=1).cpu(),
        off.sum(dim=0).cpu(),
    )


@dataclass(frozen=True)
class SquareStats:
    """One-pass reductions of a square matrix A: ``nonfinite`` entries, ``asym_sq`` =
    ‖A − Aᵀ‖_F² (depth ≤ n² + 1 roundings per term: difference, square, sum), ``fro_sq`` =
    ‖A‖_F² (depth ≤ n²), ``max_abs`` (exact), ``trace``, ``max_abs_diag`` (exact) and
    ``row_abs`` (n,) = Σ_{j≠i} |a_ij| (float64, on the CPU). Uncertified floating-point
    values; see the module docstring."""

    nonfinite: int
    asym_sq: float
    fro_sq: float
    max_abs: float
    trace: float
    max_abs_diag: float
    row_abs: torch.Tensor

    @property
    def asym_fro(self) -> float:
        return self.asym_sq**0.5

    @property
    def fro(self) -> float:
        return self.fro_sq**0.5


def square_stats(a: torch.Tensor) -> SquareStats:
    """One pass over a square 2-D matrix."""
    a = _widen(a)
    if _native_for(a):
        scalars, row_abs = torch.ops.lplr.square_stats(a)
        bad, asym2, fro2, max_abs, trace, max_diag = scalars.tolist()  # one host sync
        return SquareStats(int(bad), asym2, fro2, max_abs, trace, max_diag, row_abs.cpu())
    t = a.double()
    finite = torch.isfinite(t)
    t = torch.where(finite, t, torch.zeros((), dtype=t.dtype, device=t.device))
    diag = t.diagonal()
    skew = t - t.T
    scalars = torch.stack(
        [
            (~finite).sum().double(),
            (skew * skew).sum(),
            (t * t).sum(),
            t.abs().max(),
            diag.sum(),
            diag.abs().max(),
        ]
    ).tolist()  # one host synchronisation
    return SquareStats(
        int(scalars[0]),
        *scalars[1:],
        (t.abs().sum(dim=1) - diag.abs()).cpu(),
    )


def symv_upper(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """S v with S the symmetric matrix holding the upper triangle of ``a`` (n, n); the strict
    lower triangle is not read. ``v``: (n,) or (n, m), same dtype as ``a``."""
    a, v = a.detach(), v.detach()
    if _native_for(a) and v.device == a.device and v.dtype == a.dtype:
        return torch.ops.lplr.symv_upper(a, v)
    upper = torch.triu(a)
    return upper @ v + torch.triu(a, 1).T @ v


def abs_quadratic(a: torch.Tensor, v: torch.Tensor) -> float:
    """|v|ᵀ|A||v| in float64 for a square ``a`` and a vector ``v`` (no |A| is formed on CPU);
    rounding depth ≤ 2n per term, 2n² + 2n operations."""
    a, v = _widen(a), v.detach()
    if _native_for(a) and v.device == a.device:
        return float(torch.ops.lplr.abs_quadratic(a, v))
    w = v.double().abs()
    return float(w @ (a.double().abs() @ w))
