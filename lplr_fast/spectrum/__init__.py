"""Certified and matrix-free eigenvalue bounds for NTK matrices."""

from .bounds import SpectrumBounds, as_matrix, eig_bounds
from .lanczos import LanczosResult, lanczos

__all__ = ["LanczosResult", "SpectrumBounds", "as_matrix", "eig_bounds", "lanczos"]
