"""Consumers of the tile stream: what ``ntk_blocks`` yields is fed to them one tile at a time.

A consumer is any object with ``update(rows, cols, tile, layer=None)`` (``rows``/``cols``
slices of samples, ``tile`` the kernel block Θ(x1[rows], x2[cols]) in the layout of
``compute``; ``layer`` names a module when the tile is that module's part). Optional:

* ``per_layer`` (bool attribute): also feed each module's part with ``layer=name``;
* ``expect(*, n1, n2, compute, symmetric)``: called once before the first tile; raise there
  if the stream does not suit the consumer (``symmetric``: x2 is None and only tiles on or
  above the diagonal come, each off-diagonal one standing for its transpose too).

:class:`lplr_fast.StreamingBounds` is one; :class:`DenseAssembly` (the stored kernel,
optionally into a preallocated tensor or numpy memmap) is another. The engine knows nothing
else about its consumers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..gram import gram_out_shape
from .host_writer import HostTileWriter, is_host

Tile = tuple[slice, slice]


@runtime_checkable
class TileConsumer(Protocol):
    def update(
        self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None
    ) -> None: ...


def transpose_tile(tile: torch.Tensor, compute: str) -> torch.Tensor:
    """Θ(J, I) from Θ(I, J): swap the sample axes (and the output axes for 'full')."""
    return tile.permute(1, 0, 3, 2) if compute == "full" else tile.transpose(0, 1)


def check_consumer(
    consumer: Any, *, n1: int, n2: int, compute: str, symmetric: bool, name: str = "bounds"
) -> None:
    """Raise unless ``consumer`` can be fed; let it check the stream's layout."""
    if not isinstance(consumer, TileConsumer):
        raise TypeError(
            f"{name} must be an object with update(rows, cols, tile, layer=None), got "
            f"{type(consumer).__name__}"
        )
    expect = getattr(consumer, "expect", None)
    if callable(expect):
        expect(n1=n1, n2=n2, compute=compute, symmetric=symmetric)


def wants_parts(consumers: Iterable[Any]) -> bool:
    return any(bool(getattr(c, "per_layer", False)) for c in consumers)


def feed(
    consumer: Any, rows: slice, cols: slice, total: torch.Tensor, parts: dict[str, torch.Tensor]
) -> None:
    """One tile (and, for a per-layer consumer, each module's part) to ``consumer``."""
    consumer.update(rows, cols, total)
    if getattr(consumer, "per_layer", False):
        for name, part in parts.items():
            consumer.update(rows, cols, part, layer=name)


def write_block(dest: torch.Tensor | np.ndarray, r: slice, c: slice, tile: torch.Tensor) -> None:
    """dest[r, c] = tile, for a tensor or a numpy array / memmap (host copy there)."""
    if isinstance(dest, np.ndarray):
        dest[r, c] = tile.detach().cpu().numpy()
    else:
        dest[r, c] = tile


def _check_out_dtype(out: torch.Tensor | np.ndarray, dtype: torch.dtype) -> None:
    have = out.dtype if isinstance(out, torch.Tensor) else torch.from_numpy(out[:0]).dtype
    if have != dtype:
        raise ValueError(
            f"out has dtype {have} but the kernel is {dtype}; pass an out of dtype {dtype} "
            "(or compute in another dtype with dtype=)"
        )


class DenseAssembly:
    """The stored kernel (and per-module parts), mirrored from the upper triangle when the
    stream is symmetric. ``out``: a preallocated tensor or numpy array / memmap of the
    kernel's shape, filled in place."""

    def __init__(
        self,
        *,
        n1: int,
        n2: int,
        compute: str,
        symmetric: bool,
        dtype: torch.dtype,
        device: torch.device,
        out: torch.Tensor | np.ndarray | None = None,
        per_layer: bool = False,
    ) -> None:
        self.n1, self.n2, self.compute, self.symmetric = n1, n2, compute, symmetric
        self.dtype, self.device, self.per_layer = dtype, device, per_layer
        self.result: torch.Tensor | np.ndarray | None = out
        self.parts: dict[str, torch.Tensor] = {}
        self._shape: tuple[int, ...] | None = None
        self._writer: HostTileWriter | None = None

    def _target(self, layer: str | None, tile: torch.Tensor) -> torch.Tensor | np.ndarray:
        if self._shape is None:
            k = 1 if self.compute == "trace" else tile.shape[2]
            self._shape = gram_out_shape(self.n1, self.n2, k, self.compute)
            if self.result is None:
                self.result = torch.empty(self._shape, dtype=self.dtype, device=self.device)
            elif tuple(self.result.shape) != self._shape:
                raise ValueError(
                    f"out has shape {tuple(self.result.shape)}, expected {self._shape}"
                )
            else:
                _check_out_dtype(self.result, self.dtype)
        if layer is None:
            assert self.result is not None
            return self.result
        if layer not in self.parts:
            self.parts[layer] = torch.empty(self._shape, dtype=self.dtype, device=self.device)
        return self.parts[layer]

    def update(self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None):
        if self._adopt(rows, cols, tile, layer):
            return
        dest = self._target(layer, tile)
        self._write(dest, rows, cols, tile)
        if self.symmetric and rows != cols:
            self._write(dest, cols, rows, transpose_tile(tile, self.compute))

    def _adopt(self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None) -> bool:
        """A single tile covering the whole kernel becomes the result (no copy)."""
        whole = rows == slice(0, self.n1) and cols == slice(0, self.n2)
        if not whole or layer is not None or self.result is not None:
            return False
        if tile.dtype != self.dtype or tile.device != self.device or not tile.is_contiguous():
            return False
        self.result = tile
        return True

    def _write(self, dest: torch.Tensor | np.ndarray, r: slice, c: slice, tile: torch.Tensor):
        if tile.device.type == "cuda" and is_host(dest):  # overlap the copy with compute
            if self._writer is None:
                self._writer = HostTileWriter(tile.device)
            self._writer.submit(dest, r, c, tile)
        else:
            write_block(dest, r, c, tile)

    def finish(self) -> None:
        """Complete the pending host writes (call once after the last tile)."""
        if self._writer is not None:
            self._writer.flush()


__all__ = [
    "DenseAssembly",
    "Tile",
    "TileConsumer",
    "check_consumer",
    "feed",
    "transpose_tile",
    "wants_parts",
    "write_block",
]
