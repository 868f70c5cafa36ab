"""Empirical NTK engine: structured per-layer Grams, tiled, with torch.func references."""

from . import engine
from .engine import empirical_ntk, ntk_blocks
from .operator import NTKOperator
from .stream import DenseAssembly, TileConsumer, transpose_tile

__all__ = [
    "DenseAssembly",
    "NTKOperator",
    "TileConsumer",
    "empirical_ntk",
    "engine",
    "ntk_blocks",
    "transpose_tile",
]
