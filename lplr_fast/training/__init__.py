"""GD/SGD training with LPLR diagnostics: PL ratio, NTK bounds and drift, rate checks."""

from .checkpoint import RunFolderError
from .config import Diagnostics
from .loop import train
from .result import RunResult
from .state import StopTraining

__all__ = ["Diagnostics", "RunFolderError", "RunResult", "StopTraining", "train"]
