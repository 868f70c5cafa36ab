"""The process group as the distributed code sees it: rank, world size, and collectives that
fail with a clear :class:`DistributedError` (naming what was being done) instead of a bare
backend message or a hang.

Works without an initialised process group too (world size 1, every collective a no-op), so
each distributed function also runs in one plain process. A dead peer makes Gloo and NCCL
collectives fail as soon as its sockets close; a hung peer is caught by the process group's
timeout (``init_process_group(timeout=...)``) and, on Gloo, by the monitored barrier
(:func:`barrier`) with its own timeout, which names the ranks that did not arrive.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import pickle
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


class DistributedError(RuntimeError):
    """A collective failed: another rank died, was killed, hung past the timeout, or the
    ranks disagreed about their inputs."""


def active(group: Any = None) -> bool:
    """Whether a process group is initialised (torch.distributed available and set up)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_size(group: Any = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without a process group."""
    if not active(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_main(group: Any = None) -> bool:
    return rank_and_size(group)[0] == 0


def collective_device(group: Any = None) -> torch.device:
    """Where the backend wants collective tensors: the current CUDA device for NCCL, else
    the CPU."""
    if active(group) and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def collective(what: str, group: Any = None) -> Iterator[None]:
    """Turn a failing collective into a :class:`DistributedError` that says what failed and
    what to do."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, ConnectionError, OSError) as exc:
        rank, size = rank_and_size(group)
        raise DistributedError(
            f"rank {rank} of {size}: {what} failed ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}). Another rank "
            "has probably died, been killed or hung past the timeout; rerun the same command "
            "(work already saved, e.g. finished tiles of a store, is reused)."
        ) from exc


def barrier(what: str, group: Any = None, timeout: datetime.timedelta | None = None) -> None:
    """All ranks meet here. With a ``timeout`` on Gloo, a monitored barrier: rank 0 names
    the ranks that did not arrive in time; otherwise the process group's own timeout."""
    if not active(group):
        return
    with collective(what, group):
        if timeout is not None and dist.get_backend(group) == "gloo":
            dist.monitored_barrier(group, timeout=timeout, wait_all_ranks=True)
        else:
            dist.barrier(group)


def broadcast(obj: T, what: str, group: Any = None, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not active(group):
        return obj
    box = [obj]
    with collective(what, group):
        dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather(obj: Any, what: str, group: Any = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active(group):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    with collective(what, group):
        dist.all_gather_object(out, obj, group=group)
    return out


def gather(obj: Any, what: str, group: Any = None, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank ``dst``; None elsewhere."""
    if not active(group):
        return [obj]
    rank, size = rank_and_size(group)
    out: list[Any] | None = [None] * size if rank == dst else None
    with collective(what, group):
        dist.gather_object(obj, out, dst=dst, group=group)
    return out


def all_reduce_(tensors: list[torch.Tensor], what: str, group: Any = None, op: Any = None) -> None:
    """Sum (or ``op``) each tensor over the ranks, in place, with one collective (the tensors
    are packed into one buffer on the backend's device)."""
    if not active(group) or not tensors:
        return
    device = collective_device(group)
    dtype = tensors[0].dtype
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])
    with collective(what, group):
        dist.all_reduce(flat, op=op or dist.ReduceOp.SUM, group=group)
    offset = 0
    for t in tensors:
        size = t.numel()
        t.copy_(flat[offset : offset + size].view_as(t))
        offset += size


def _plain(obj: Any) -> Any:
    """``obj`` with tensors replaced by (shape, dtype, bytes): pickles of tensors are not
    byte-stable between processes."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        return ("tensor", tuple(t.shape), str(t.dtype), t.view(torch.uint8).numpy().tobytes())
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def digest(obj: Any) -> str:
    """A short stable hash of a picklable value (for agreement checks)."""
    return hashlib.sha256(pickle.dumps(_plain(obj), protocol=4)).hexdigest()[:16]


def agree(value: Any, what: str, group: Any = None) -> None:
    """Raise (on every rank alike) unless every rank passed the same ``value``: mismatched
    models, data or options between ranks are refused before any work."""
    if not active(group):
        return
    mine = digest(value)
    summary = value if isinstance(value, dict) else None  # to name differing keys
    everyone = all_gather((mine, summary), f"checking that all ranks have the same {what}", group)
    first_hash, first_value = everyone[0]
    differing = [r for r, (h, _) in enumerate(everyone) if h != first_hash]
    if differing:
        detail = ""
        other = everyone[differing[0]][1]
        if isinstance(first_value, dict) and isinstance(other, dict):
            keys = sorted(
                (k for k in set(first_value) | set(other) if first_value.get(k) != other.get(k)),
                key=str,
            )
            shown = [0, *differing[:3]]
            values = "; ".join(
                f"{k}: " + ", ".join(f"rank {r} {_short(everyone[r][1], k)}" for r in shown)
                for k in keys[:4]
            )
            detail = f" (they differ in: {', '.join(map(str, keys))}; {values})"
        raise DistributedError(
            f"the ranks disagree about the {what}: rank(s) {differing} differ from rank 0"
            f"{detail}. Every rank must be started with the same model, data and options."
        )


def _short(values: Any, key: Any) -> str:
    text = repr(values.get(key)) if isinstance(values, dict) else "?"
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedError",
    "active",
    "agree",
    "all_gather",
    "all_reduce_",
    "barrier",
    "broadcast",
    "collective",
    "collective_device",
    "digest",
    "gather",
    "is_main",
    "rank_and_size",
]
