"""Data-parallel training under a process group (what ``lplr_fast.train`` uses when launched
by torchrun with more than one rank).

* Every loss (full batch for GD, the mini-batch for SGD) is split into contiguous sample
  shards; each rank runs forward and backward on its shard with the loss scaled for the
  whole batch, and one all-reduce (SUM) of all gradients packed in one buffer gives every
  rank the full gradient, bitwise the same on all ranks. So all ranks take the same steps
  and hold the same parameters; GD iterates equal one process's up to the order of the
  gradient's summation.
* NTK diagnostics: the tiles of Θ on the diagnostic samples are split over the ranks
  (:mod:`.schedule`), probe-checked jointly, and all-gathered; every rank assembles the same
  kernel and computes the same bounds (no further broadcast needed). The kernel is held on
  every rank: keep the diagnostic subset (``Diagnostics.ntk_subset``) to what one device
  holds; bigger kernels go through :func:`lplr_fast.distributed.empirical_ntk` and a store.
* Only rank 0 writes the run folder; a resumed run's saved state is read by rank 0 and
  broadcast. A stop request (Ctrl-C, an ``on_step`` callback) on any rank stops all ranks at
  the same step boundary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..ntk.stream import DenseAssembly
from ..training.parallel import SingleProcess
from .group import agree, all_gather, all_reduce_, broadcast, rank_and_size
from .kernel import _consumers, _finish_probe, prepare
from .schedule import TileGrid, shard, split


class DataParallel(SingleProcess):
    """The :class:`lplr_fast.training.parallel.SingleProcess` hooks over a process group."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank, self.world = rank_and_size(group)

    def rows(self, count: int) -> slice:
        return shard(count, self.rank, self.world)

    def reduce_loss_and_grads(self, value: torch.Tensor, params: list[torch.Tensor]) -> float:
        """Sum the shards' gradients and losses (one all-reduce). A parameter whose gradient
        is None on every rank keeps None (as in one process: SGD then skips it)."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        present = [0.0 if p.grad is None else 1.0 for p in params]
        dtype = grads[0].dtype
        tail = torch.tensor([float(value.detach()), *present], dtype=dtype)
        all_reduce_([*grads, tail], "the gradient all-reduce", self.group)
        for p, g, seen in zip(params, grads, tail[1:].tolist(), strict=True):
            p.grad = g if seen > 0 else None
        return float(tail[0])

    def kernel(self, model: nn.Module, x: torch.Tensor, compute: str) -> torch.Tensor:
        return gathered_ntk(model, x, compute=compute, dtype=torch.float64, group=self.group)

    def agree(self, value: Any, what: str) -> None:
        agree(value, what, self.group)

    def share(self, payload: Any) -> Any:
        return broadcast(payload, "sharing rank 0's state", self.group)

    def any(self, flag: bool) -> bool:
        box = [torch.tensor([1.0 if flag else 0.0])]
        all_reduce_(box, "agreeing on a stop request", self.group, op=dist.ReduceOp.MAX)
        return bool(box[0][0] > 0)


def gathered_ntk(
    model: nn.Module,
    x: torch.Tensor,
    *,
    compute: str = "full",
    dtype: torch.dtype | None = torch.float64,
    block_size: int | None = None,
    verify: str = "probe",
    group: Any = None,
) -> torch.Tensor:
    """Θ(x, x) with its tiles split over the ranks, probe-checked, and all-gathered: the same
    kernel (bitwise that of ``lplr_fast.empirical_ntk`` with the same block size) on every
    rank. For kernels that fit on one device."""
    rank, world = rank_and_size(group)
    src, _ = prepare(
        model, x, None, compute=compute, block_size=block_size, dtype=dtype,
        batchnorm="error", conv_route="auto", group=group,
    )  # fmt: skip
    grid = TileGrid(src.n1, src.n2, src.block_size, True)
    mine = split(grid, world)[rank]
    _, probe = _consumers(src, False, verify, group)
    tiles = []
    for rows, cols, tile, _ in src.tiles(only=mine):
        if probe is not None:
            probe.update(rows, cols, tile)
        tiles.append((rows, cols, tile.cpu()))
    _finish_probe(probe)
    everyone = all_gather(tiles, "gathering the NTK tiles", group)
    device = src.job.x1.device
    dense = DenseAssembly(
        n1=src.n1, n2=src.n2, compute=compute, symmetric=True, dtype=src.job.out_dtype,
        device=device,
    )  # fmt: skip
    for rows, cols, tile in sorted(
        (t for part in everyone for t in part), key=lambda t: (t[0].start, t[1].start)
    ):
        dense.update(rows, cols, tile.to(device))
    dense.finish()
    assert dense.result is not None
    return dense.result  # type: ignore[return-value]


__all__ = ["DataParallel", "gathered_ntk"]
