"""Kernel tiles computed on a GPU, written into host memory (a numpy array or memmap, or a CPU
tensor) without stalling the computation: each tile is copied into a pinned buffer on a side
stream, and written into its destination only when the next tile arrives, by which time its
copy has long finished, while the GPU computes that next tile.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IN_FLIGHT = 2  # tiles whose copies may be pending at once (double buffering)


@dataclass
class _Pending:
    done: torch.cuda.Event
    buffer: torch.Tensor  # pinned host memory
    tile: torch.Tensor  # kept alive until its copy is done
    dest: Any
    rows: slice
    cols: slice


class HostTileWriter:
    """``submit(dest, rows, cols, tile)`` for CUDA tiles; ``flush()`` once at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pending: deque[_Pending] = deque()
        self.free: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        pool = self.free.get((shape, dtype))
        if pool:
            return pool.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def submit(self, dest: Any, rows: slice, cols: slice, tile: torch.Tensor) -> None:
        if len(self.pending) >= IN_FLIGHT:
            self._write_oldest()
        buffer = self._buffer(tuple(tile.shape), tile.dtype)
        ready = torch.cuda.current_stream(self.device).record_event()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            buffer.copy_(tile, non_blocking=True)
            done = self.stream.record_event()
        self.pending.append(_Pending(done, buffer, tile, dest, rows, cols))

    def _write_oldest(self) -> None:
        job = self.pending.popleft()
        job.done.synchronize()
        if isinstance(job.dest, np.ndarray):
            job.dest[job.rows, job.cols] = job.buffer.numpy()
        else:
            job.dest[job.rows, job.cols] = job.buffer
        self.free.setdefault((tuple(job.buffer.shape), job.buffer.dtype), []).append(job.buffer)

    def flush(self) -> None:
        """Write every pending tile into its destination."""
        while self.pending:
            self._write_oldest()


def is_host(dest: Any) -> bool:
    return isinstance(dest, np.ndarray) or (
        isinstance(dest, torch.Tensor) and dest.device.type == "cpu"
    )
