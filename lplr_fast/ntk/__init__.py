"""Empirical NTK engine: structured per-layer Grams, tiled, with torch.func references."""

from . import engine
from .engine import empirical_ntk, ntk_blocks, routes
from .operator import NTKOperator
from .probe import ProbeMismatchError, ProbeReport
from .stream import DenseAssembly, TileConsumer, transpose_tile

__all__ = [
    "DenseAssembly",
    "NTKOperator",
    "ProbeMismatchError",
    "ProbeReport",
    "TileConsumer",
    "empirical_ntk",
    "engine",
    "ntk_blocks",
    "routes",
    "transpose_tile",
]
