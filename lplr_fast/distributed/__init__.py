"""lplr_fast across processes, GPUs and nodes (torch.distributed; docs/SCALING.md).

Launch with ``torchrun --nproc_per_node=N ...`` (or any launcher that sets up
``torch.distributed``: Gloo on CPUs, NCCL on GPUs) and call, on every rank alike:

* :func:`empirical_ntk` — the kernel's tiles split over the ranks into a shared tile store
  (:mod:`.store`: resumable, checked, lazily readable), with certified streaming bounds
  merged exactly and the probe self-check;
* :class:`DistributedNTKOperator` + :func:`lanczos_bounds` — Θ·v with samples sharded over the
  ranks (Jᵀv by local VJPs + one all-reduce, J(Jᵀv) locally) and Lanczos estimates of
  λ_max and of the Ritz value of λ_min; :class:`StoreOperator` — Θ·v over a finished store;
  :func:`store_bounds` — certified bounds of a stored kernel (dense factorisation on rank 0
  while it fits, else the streaming brackets and Lanczos estimates, each labelled);
* ``lplr_fast.train(...)`` — data-parallel GD/SGD when a process group is initialised.

Everything also runs in one plain process (world size 1).
"""

from .group import DistributedError, is_main, rank_and_size
from .kernel import DistributedNTK, empirical_ntk
from .operator import DistributedNTKOperator, StoreOperator, lanczos_bounds, store_bounds
from .schedule import TileGrid, split
from .store import StoredKernel, StoreError, open_store

__all__ = [
    "DistributedError",
    "DistributedNTK",
    "DistributedNTKOperator",
    "StoreError",
    "StoreOperator",
    "StoredKernel",
    "TileGrid",
    "empirical_ntk",
    "is_main",
    "lanczos_bounds",
    "open_store",
    "rank_and_size",
    "split",
    "store_bounds",
]
