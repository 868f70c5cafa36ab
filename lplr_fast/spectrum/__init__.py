"""Certified, streaming and matrix-free eigenvalue bounds for NTK matrices."""

from .bounds import SpectrumBounds, as_matrix, eig_bounds
from .distance import NormBounds, ntk_distance
from .inputs import WidenedInputWarning
from .lanczos import LanczosResult, lanczos
from .streaming import StreamingBounds

__all__ = [
    "LanczosResult",
    "NormBounds",
    "SpectrumBounds",
    "StreamingBounds",
    "WidenedInputWarning",
    "as_matrix",
    "eig_bounds",
    "lanczos",
    "ntk_distance",
]
