"""Empirical NTK engine: structured per-layer Grams, tiled, with torch.func references."""

from .engine import empirical_ntk, ntk_blocks, transpose_tile
from .operator import NTKOperator

__all__ = ["NTKOperator", "empirical_ntk", "ntk_blocks", "transpose_tile"]
