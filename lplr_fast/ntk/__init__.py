"""Empirical NTK engine: structured per-layer Grams, tiled, with torch.func references."""

from .engine import empirical_ntk, ntk_blocks, transpose_tile

__all__ = ["empirical_ntk", "ntk_blocks", "transpose_tile"]
