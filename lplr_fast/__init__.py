"""lplr_fast: exact empirical NTKs, certified eigenvalue bounds and LPLR diagnostics."""

from __future__ import annotations

from . import _backend, ntk
from ._backend import backend_info
from .gram import gram_accumulate, gram_accumulate_reference
from .ntk import NTKOperator, ProbeMismatchError, empirical_ntk, ntk_blocks
from .spectrum import NormBounds, SpectrumBounds, StreamingBounds, eig_bounds, ntk_distance
from .training import Diagnostics, RunResult, train

ntk.engine.set_bounds_factory(StreamingBounds)  # what empirical_ntk(..., bounds=True) builds

__version__ = "0.1.0"

# Load the compiled module now: it registers the torch.ops.lplr operators (and their fake
# implementations); without it, the one warning about the fallback comes here.
_backend.native()

__all__ = [
    "Diagnostics",
    "NTKOperator",
    "NormBounds",
    "ProbeMismatchError",
    "RunResult",
    "SpectrumBounds",
    "StreamingBounds",
    "__version__",
    "backend_info",
    "eig_bounds",
    "empirical_ntk",
    "gram_accumulate",
    "gram_accumulate_reference",
    "ntk_blocks",
    "ntk_distance",
    "train",
]
