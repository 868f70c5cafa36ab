"""The random-probe self-check of :mod:`lplr_fast.ntk.probe` over a kernel computed by many
ranks: each rank adds uᵀΘv over its own tiles (read back or computed), the sums are
all-reduced, and the autograd side J(x)ᵀu is pulled over each rank's share of the samples
and all-reduced too (the trace/diagonal modes pull on a few strata, cheap enough to do on
every rank alike). Same probes, same tolerance as in one process."""

from __future__ import annotations

from typing import Any

import torch

from ..ntk.probe import ProbeCheck, ProbeReport
from .group import all_reduce_, rank_and_size
from .schedule import shard


class ShardedProbe(ProbeCheck):
    """:class:`ProbeCheck` whose sums run over the ranks of ``group``."""

    def __init__(self, *args: Any, group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def _pull_full(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        rank, world = rank_and_size(self.group)
        blocks = -(-x.shape[0] // self.block)
        mine = shard(blocks, rank, world)
        params = self._params()
        total = [torch.zeros_like(p) for p in params]
        lo, hi = mine.start * self.block, min(x.shape[0], mine.stop * self.block)
        if hi > lo:
            part = super()._pull_full(x[lo:hi], w[lo:hi])
            total = [a + b for a, b in zip(total, part, strict=True)]
        all_reduce_(total, "the probe check's gradient all-reduce", self.group)
        return total

    def finish(self) -> ProbeReport:
        sums = [self.value, self.square]
        all_reduce_(sums, "the probe check's kernel-side all-reduce", self.group)
        return super().finish()


__all__ = ["ShardedProbe"]
