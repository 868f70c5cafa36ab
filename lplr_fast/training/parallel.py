"""How a run's work is shared between processes. :class:`SingleProcess` (the default) does
everything here; ``lplr_fast.distributed.training.DataParallel`` (chosen by ``train`` when a
torch.distributed process group with more than one rank is initialised) shards the samples
of each loss over the ranks and all-reduces the gradients, computes NTK diagnostics with the
distributed tile stream, and lets only rank 0 write files."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ntk.engine import empirical_ntk


class SingleProcess:
    """One process does all the work (the hooks are identities)."""

    rank = 0
    world = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder."""
        return self.rank == 0

    def rows(self, count: int) -> slice:
        """This process's share of ``count`` samples of a loss."""
        return slice(0, count)

    def reduce_loss_and_grads(self, value: torch.Tensor, params: list[torch.Tensor]) -> float:
        """After backward of this process's share of a loss: the whole loss (gradients
        summed over processes in place)."""
        return float(value.detach())

    def kernel(self, model: nn.Module, x: torch.Tensor, compute: str) -> torch.Tensor:
        """Θ(x, x) in float64 (the whole kernel, on every process)."""
        return empirical_ntk(model, x, compute=compute, dtype=torch.float64)  # type: ignore[arg-type]

    def agree(self, value: Any, what: str) -> None:
        """Raise unless every process has the same ``value``."""

    def share(self, payload: Any) -> Any:
        """Rank 0's ``payload`` (e.g. the saved state to resume from) on every process."""
        return payload

    def any(self, flag: bool) -> bool:
        """Whether any process raised ``flag`` (e.g. a stop request)."""
        return flag


def current() -> SingleProcess:
    """DataParallel when a process group of two or more ranks is initialised, else
    SingleProcess."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from ..distributed.training import DataParallel

        return DataParallel()
    return SingleProcess()


__all__ = ["SingleProcess", "current"]
