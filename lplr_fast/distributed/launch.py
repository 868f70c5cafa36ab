"""Join the process group that a launcher (torchrun) describes in the environment.

``torchrun --nproc_per_node=N -m lplr_fast.cli ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT for every process; :func:`init_from_env` then starts the group
(NCCL for a CUDA device, Gloo otherwise) and gives each rank its own GPU (cuda:LOCAL_RANK).
Without those variables (a plain run) nothing happens.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .group import DEFAULT_TIMEOUT


def launched() -> bool:
    """Whether a launcher asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Iterator[str]:
    """Inside: the process group of the launcher (if any) and this rank's device ("cuda"
    becomes cuda:LOCAL_RANK under a launcher). The group is left cleanly on exit."""
    if not launched() or dist.is_initialized():
        yield device
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    ok = False
    try:
        yield device
        ok = True
    finally:
        if ok:  # leave together; after an error the launcher tears the group down
            with contextlib.suppress(RuntimeError):
                dist.barrier()
        with contextlib.suppress(RuntimeError):
            dist.destroy_process_group()


__all__ = ["launched", "process_group"]
