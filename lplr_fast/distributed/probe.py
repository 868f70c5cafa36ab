"""The random-probe self-check of :mod:`lplr_fast.ntk.probe` over a kernel computed by many
ranks: each rank adds uᵀΘv over its own tiles (read back or computed), the sums are
all-reduced, and the autograd side J(x)ᵀu is pulled over each rank's share of the samples
and all-reduced too (all samples in every mode, each rank pulling its blocks). Same probes,
same tolerance as in one process, plus the all-reduce's additions in the float64 sums."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..ntk.probe import ProbeCheck, ProbeReport
from .group import all_reduce_, rank_and_size
from .schedule import shard


class ShardedProbe(ProbeCheck):
    """:class:`ProbeCheck` whose sums run over the ranks of ``group``."""

    def __init__(self, *args: Any, group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def _pull(self, x: torch.Tensor, w: torch.Tensor, outputs: tuple[int, int] | None):
        """This rank's share of the blocks of samples, summed over the ranks."""
        rank, world = rank_and_size(self.group)
        blocks = -(-x.shape[0] // self.block)
        mine = shard(blocks, rank, world)
        lo, hi = mine.start * self.block, min(x.shape[0], mine.stop * self.block)
        lo = min(lo, hi)
        total = super()._pull(x[lo:hi], w[lo:hi], outputs)
        all_reduce_(total, "the probe check's gradient all-reduce", self.group)
        return total

    def _output_chunk(self) -> int:
        """The smallest chunk of all ranks: every rank runs the same all-reduces."""
        chunk = torch.tensor([super()._output_chunk()], dtype=torch.float64)
        all_reduce_([chunk], "the probe check's chunk size", self.group, op=dist.ReduceOp.MIN)
        return int(chunk.item())

    def finish(self) -> ProbeReport:
        sums = [self.value, self.absolute, self.square]
        device = self.x1.device
        totals = [s.total(device).reshape(1) for s in sums]
        all_reduce_(totals, "the probe check's kernel-side all-reduce", self.group)
        _, world = rank_and_size(self.group)
        for s, t in zip(sums, totals, strict=True):
            s.merged(t, world)
        return super().finish()


__all__ = ["ShardedProbe"]
