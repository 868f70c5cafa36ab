"""Exact symmetry of a diagonal kernel tile, in place and in bounded extra memory.

A diagonal tile Θ(I, I) is symmetric in exact arithmetic; routes that compute both of its
triangles (GEMMs on a GPU, the ghost spatial contraction, cross pairs of a module used twice)
leave rounding-level differences between Θ[i, j] and Θ[j, i]. :func:`symmetrize_` replaces
both by their average, block by block: temporary memory is one block, not one tile.
"""

from __future__ import annotations

import torch

BLOCK = 1024  # samples per block side


def _mirror(view: torch.Tensor, compute: str) -> torch.Tensor:
    """Θ(J, I) laid out as Θ(I, J): swap the sample axes (and the output axes for 'full')."""
    return view.permute(1, 0, 3, 2) if compute == "full" else view.transpose(0, 1)


def symmetrize_(tile: torch.Tensor, compute: str, block: int = BLOCK) -> torch.Tensor:
    """Make the square tile (n, n[, k[, k]]) exactly symmetric in place and return it:
    Θ[i, j] and Θ[j, i] (output axes swapped for 'full') both become their average."""
    n = tile.shape[0]
    for i0 in range(0, n, block):
        rows = slice(i0, min(n, i0 + block))
        upper = tile[rows, rows]  # a + aᵀ is exactly symmetric: addition commutes
        upper.copy_(torch.add(upper, _mirror(upper, compute)).mul_(0.5))
        for j0 in range(i0 + block, n, block):
            cols = slice(j0, min(n, j0 + block))
            upper = tile[rows, cols]
            upper.lerp_(_mirror(tile[cols, rows], compute), 0.5)
            tile[cols, rows] = _mirror(upper, compute)  # the mirror is a copy: exact
    return tile
