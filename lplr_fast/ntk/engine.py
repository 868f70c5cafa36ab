"""The empirical NTK of a PyTorch model, structured per layer and tiled over samples.

Θ[(i,c),(j,c')] = Σ_θ ∂f_c(x_i)/∂θ · ∂f_c'(x_j)/∂θ, summed module by module (see rules.py).
Samples are split into blocks; for every tile (I, J) of blocks the features of both blocks
(module inputs and output cotangents, or per-sample gradients for modules without a rule) are
paired module by module. With x2=None only tiles with J ≥ I are computed.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..gram import COMPUTE_MODES, gram_out_shape
from ..spectrum.streaming import StreamingBounds
from . import reference
from .capture import Capture, forward_with_cotangents, parametrised_modules
from .rules import ConvRoute, Features, accumulate_pair, default_chunk, feature_bytes_per_sample
from .rules import module_features as _module_features
from .validation import (
    batchnorms_in_eval,
    check_inputs,
    check_model,
    train_mode_batchnorms,
    trainable_parameters,
)

Implementation = Literal["structured", "jacobian", "ntk_vp"]
TOTAL = "<total>"  # key of the single accumulator when per-module parts are not wanted
IMPLEMENTATIONS = ("structured", "jacobian", "ntk_vp")
Tile = tuple[slice, slice]


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: free GPU memory, or available host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def total_memory_bytes(device: torch.device) -> int:
    """Memory of ``device`` that does not change while the machine runs: the GPU's total
    memory, or host RAM (MemTotal, capped by a cgroup v2 memory limit)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = ""
    if limit.isdigit():
        total = min(total, int(limit))
    return int(total)


def transpose_tile(tile: torch.Tensor, compute: str) -> torch.Tensor:
    """Θ(J, I) from Θ(I, J): swap the sample axes (and the output axes for 'full')."""
    return tile.permute(1, 0, 3, 2) if compute == "full" else tile.transpose(0, 1)


class _BlockFeatures:
    """Per-block features, module name → list of features (one per use), with a byte-bounded
    cache so that column blocks are not recomputed when they fit."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        compute: str,
        route: ConvRoute,
        block: int,
        cache_bytes: int,
    ) -> None:
        self.model, self.x, self.compute, self.route, self.block = model, x, compute, route, block
        self.capture = Capture(parametrised_modules(model))
        self.cache: dict[int, dict[str, list[Features]]] = {}
        self.cache_bytes_left = cache_bytes
        self.k: int | None = None

    def get(self, b: int) -> dict[str, list[Features]]:
        if b in self.cache:
            return self.cache[b]
        feats, nbytes = self.compute_block(self.x[b * self.block : (b + 1) * self.block])
        if nbytes <= self.cache_bytes_left:
            self.cache[b] = feats
            self.cache_bytes_left -= nbytes
        return feats

    def compute_block(self, xb: torch.Tensor) -> tuple[dict[str, list[Features]], int]:
        flat, uses = forward_with_cotangents(self.model, xb, self.capture)
        k = flat.shape[1]
        if self.k is None:
            self.k = k
        kk = k * k if self.compute == "full" else k
        feats: dict[str, list[Features]] = {}
        nbytes = 0
        for use in uses:
            n_params = sum(p.numel() for p in use.module.parameters(recurse=False))
            f = _module_features(
                use,
                self.capture,
                kk=kk,
                route=self.route,
                chunk=default_chunk(xb.shape[0], k, n_params),
            )
            feats.setdefault(use.name, []).append(f)
            nbytes += feature_bytes_per_sample(f) * xb.shape[0]
        return feats, nbytes


def _pair_blocks(
    parts: dict[str, torch.Tensor],
    f1: dict[str, list[Features]],
    f2: dict[str, list[Features]] | None,
    compute: str,
) -> None:
    """Accumulate every module's contribution of one tile into ``parts``; each use of a
    module in the row block is paired with each use in the column block."""
    for name, uses1 in f1.items():
        out = parts[name]
        if f2 is None:
            for u, fu in enumerate(uses1):
                for v, fv in enumerate(uses1):
                    accumulate_pair(out, fu, None if u == v else fv, compute)
        else:
            for fu in uses1:
                for fv in f2.get(name, []):
                    accumulate_pair(out, fu, fv, compute)


def _choose_block_size(
    model: nn.Module,
    x: torch.Tensor,
    compute: str,
    route: ConvRoute,
    n_parts: int,
    out_dtype: torch.dtype,
) -> int:
    """Largest block whose features (two blocks) and tile parts fit in an eighth of the
    device's total memory, from the feature size of a probe block of up to 4 samples.

    The tile partition decides which GEMMs produce each kernel entry, hence its last bits:
    it is derived from quantities fixed on a machine (never from the memory free right now)
    so that the same call gives bitwise the same kernel whatever the machine's load."""
    probe = _BlockFeatures(model, x, compute, route, block=4, cache_bytes=0)
    xb = x[:4]
    _, nbytes = probe.compute_block(xb)
    per_sample = max(1, nbytes // xb.shape[0])
    k = probe.k or 1
    kk = k * k if compute == "full" else (k if compute == "diagonal" else 1)
    budget = total_memory_bytes(x.device) // 8
    esize = torch.finfo(out_dtype).bits // 8
    by_features = budget // (4 * per_sample)
    by_tile = int(math.sqrt(budget / (4 * kk * esize * (n_parts + 1))))
    return int(max(1, min(x.shape[0], by_features, by_tile, 4096)))


def _prepare(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    compute: str,
    implementation: str,
    dtype: torch.dtype | None,
    batchnorm: str,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute must be one of {sorted(COMPUTE_MODES)}, got {compute!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    check_model(model, batchnorm)
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        x1 = x1.to(dtype) if torch.is_tensor(x1) and x1.is_floating_point() else x1
        x2 = x2.to(dtype) if torch.is_tensor(x2) and x2.is_floating_point() else x2
    check_inputs(model, x1, x2)
    return model, x1, x2


def _structured_tiles(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    compute: str,
    block_size: int | None,
    route: ConvRoute,
    want_parts: bool,
    out_dtype: torch.dtype,
) -> Iterator[tuple[Tile, dict[str, torch.Tensor]]]:
    names = list(parametrised_modules(model))
    if block_size is None:
        block_size = _choose_block_size(
            model, x1, compute, route, len(names) if want_parts else 0, out_dtype
        )
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    xs2 = x1 if x2 is None else x2
    budget = available_memory_bytes(x1.device) // 8
    # Row blocks are visited once each, so only the column blocks are worth caching (with
    # x2=None the rows are the columns). The cache size follows the free memory: a cached
    # block and a recomputed one hold the same bits, so it changes the speed, not the result.
    rows = _BlockFeatures(model, x1, compute, route, block_size, budget if x2 is None else 0)
    cols = rows if x2 is None else _BlockFeatures(model, xs2, compute, route, block_size, budget)
    n_row_blocks = -(-x1.shape[0] // block_size)
    n_col_blocks = -(-xs2.shape[0] // block_size)
    for bi in range(n_row_blocks):
        f1 = rows.get(bi)
        r = slice(bi * block_size, min(x1.shape[0], (bi + 1) * block_size))
        for bj in range(bi if x2 is None else 0, n_col_blocks):
            c = slice(bj * block_size, min(xs2.shape[0], (bj + 1) * block_size))
            k = rows.k
            assert k is not None
            shape = gram_out_shape(r.stop - r.start, c.stop - c.start, k, compute)
            if want_parts:
                parts = {n: torch.zeros(shape, dtype=out_dtype, device=x1.device) for n in names}
                targets = parts
            else:  # one accumulator shared by all modules: no per-module tiles in memory
                parts = {TOTAL: torch.zeros(shape, dtype=out_dtype, device=x1.device)}
                targets = dict.fromkeys(names, parts[TOTAL])
            symmetric = x2 is None and bi == bj
            _pair_blocks(targets, f1, None if symmetric else cols.get(bj), compute)
            if symmetric:  # exact symmetry on the diagonal tiles (routes without mirroring)
                parts = {n: 0.5 * (p + transpose_tile(p, compute)) for n, p in parts.items()}
            yield (r, c), parts


def _tile_total(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of a tile's parts (the tile itself when parts were not kept)."""
    if TOTAL in parts:
        return parts[TOTAL]
    values = list(parts.values())
    total = values[0].clone()
    for value in values[1:]:
        total += value
    return total


def ntk_blocks(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    compute: Literal["full", "trace", "diagonal"] = "full",
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    return_layers: bool = False,
    batchnorm: Literal["error", "eval", "batch"] = "error",
    conv_route: ConvRoute = "auto",
    bounds: StreamingBounds | None = None,
) -> Iterator[tuple[Tile, Any]]:
    """Stream the structured empirical NTK tile by tile.

    Yields ``((rows, cols), tile)`` with ``rows``/``cols`` slices of x1/x2 and ``tile`` the
    kernel block Θ(x1[rows], x2[cols]) in the layout of ``compute`` (see
    :func:`empirical_ntk`). With ``x2=None`` only tiles with ``cols`` at or right of
    ``rows`` are yielded (the rest is their transpose, see :func:`transpose_tile`). With
    ``return_layers=True`` each tile is a pair ``(tile, parts)`` with ``parts`` a dict
    module name → that module's share of the tile. Memory: two blocks of features and one
    tile (per part) at a time. ``bounds``: a :class:`StreamingBounds` fed every tile as it
    passes (x2=None, compute "full" or "trace").
    """
    model, x1, x2 = _prepare(model, x1, x2, compute, "structured", dtype, batchnorm)
    _check_stream(bounds, x1, x2, compute)
    if batchnorm == "batch" and train_mode_batchnorms(model):
        raise ValueError(
            "batchnorm='batch' couples all samples of a batch and cannot be tiled; "
            "use empirical_ntk(..., batchnorm='batch') on the whole batch"
        )
    out_dtype = next(iter(trainable_parameters(model).values())).dtype
    want_parts = return_layers or (bounds is not None and bounds.per_layer)
    with batchnorms_in_eval(model, batchnorm == "eval"):
        for tile, parts in _structured_tiles(
            model, x1, x2, compute, block_size, conv_route, want_parts, out_dtype
        ):
            total = _tile_total(parts)
            _feed(bounds, tile, total, parts)
            yield tile, ((total, parts) if return_layers else total)


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    compute: Literal["full", "trace", "diagonal"] = "full",
    implementation: Implementation = "structured",
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    return_layers: bool = False,
    batchnorm: Literal["error", "eval", "batch"] = "error",
    out: torch.Tensor | np.ndarray | None = None,
    conv_route: ConvRoute = "auto",
    bounds: bool | StreamingBounds | None = None,
) -> Any:
    """Empirical NTK Θ(x1, x2) = J(x1) J(x2)ᵀ of ``model``'s outputs w.r.t. its trainable
    parameters.

    Args:
        model: maps a batch (n, ...) to outputs (n, ...) flattened per sample to k outputs.
        x1: (n1, ...) inputs; x2: (n2, ...) inputs or None for x2 = x1 (symmetry exploited).
        compute: "full" → (n1, n2, k, k); "trace" → (n1, n2), summed over outputs c = c';
            "diagonal" → (n1, n2, k), output c with output c. (neural-tangents'
            ``trace_axes=()`` is "full"; note that its default *averages* over outputs.)
        implementation: "structured" (per-layer Gram identities, the fast path),
            "jacobian" (torch.func per-sample Jacobians + contraction) or "ntk_vp"
            (VJP/JVP NTK-vector products), the last two as references.
        block_size: samples per tile side; default from the device's total memory (fixed
            per machine: pass it explicitly for bitwise-equal kernels across machines).
        dtype: compute in this dtype (the model is copied, never modified).
        return_layers: also return a dict module name → that module's contribution.
        batchnorm: BatchNorm in training mode: "error" (default) raises; "eval" uses running
            statistics (model state untouched); "batch" computes the exact batch-coupled
            kernel with batch statistics (generic Jacobian path: slow, memory n·k·P).
        out: optional preallocated tensor or numpy array / memmap of the result's shape,
            filled tile by tile (structured only).
        conv_route: "auto" (cost model), "ghost" or "materialize" for conv layers.
        bounds: a :class:`StreamingBounds` (n = len(x1)) fed every tile while the kernel is
            computed (x2=None, compute "full" or "trace"): trace, Frobenius norm, diagonal
            and Gershgorin bounds (and per-layer parts with ``per_layer=True``) without a
            second pass over the kernel. ``bounds=True`` makes one (per-layer when
            ``return_layers``) and returns it last.

    Returns:
        The kernel (``out`` when given), then ``parts`` with ``return_layers`` and the
        :class:`StreamingBounds` with ``bounds=True``: ``kernel``, ``(kernel, parts)``,
        ``(kernel, stream)`` or ``(kernel, parts, stream)``.
    """
    model, x1, x2 = _prepare(model, x1, x2, compute, implementation, dtype, batchnorm)
    if bounds is True:
        stream = StreamingBounds(x1.shape[0], per_layer=return_layers)
        _check_stream(stream, x1, x2, compute)
        result = empirical_ntk(
            model, x1, x2, compute=compute, implementation=implementation,
            block_size=block_size, return_layers=return_layers, batchnorm=batchnorm, out=out,
            conv_route=conv_route, bounds=stream,
        )  # fmt: skip
        return (*result, stream) if return_layers else (result, stream)
    bounds = bounds or None
    _check_stream(bounds, x1, x2, compute)
    out_dtype = next(iter(trainable_parameters(model).values())).dtype
    coupled = batchnorm == "batch" and bool(train_mode_batchnorms(model))
    if coupled or implementation != "structured":
        if out is not None:
            raise ValueError("out= is supported by implementation='structured' only")
        with batchnorms_in_eval(model, batchnorm == "eval"):
            if coupled:
                parts = reference.batch_coupled_ntk(model, x1, x2, compute)
            elif implementation == "jacobian":
                parts = reference.jacobian_ntk(model, x1, x2, compute, block_size or x1.shape[0])
            else:
                parts = reference.ntk_vp(model, x1, x2, compute)
        total = sum(parts.values())
        whole = slice(0, x1.shape[0])
        _feed(bounds, (whole, whole), total, parts)
        return (total, parts) if return_layers else total

    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    result: Any = out
    layer_parts: dict[str, torch.Tensor] = {}
    want_parts = return_layers or (bounds is not None and bounds.per_layer)
    with batchnorms_in_eval(model, batchnorm == "eval"):
        for (r, c), parts in _structured_tiles(
            model, x1, x2, compute, block_size, conv_route, want_parts, out_dtype
        ):
            tile = _tile_total(parts)
            _feed(bounds, (r, c), tile, parts)
            if not layer_parts and r.start == 0 and c.start == 0:
                k = 1 if compute == "trace" else tile.shape[2]
                shape = gram_out_shape(x1.shape[0], n2, k, compute)
                if result is None:
                    result = torch.empty(shape, dtype=out_dtype, device=x1.device)
                elif tuple(result.shape) != shape:
                    raise ValueError(f"out has shape {tuple(result.shape)}, expected {shape}")
            _write(result, r, c, tile)
            if return_layers:
                for name, part in parts.items():
                    if name not in layer_parts:
                        layer_parts[name] = torch.empty(
                            result.shape, dtype=out_dtype, device=x1.device
                        )
                    _write(layer_parts[name], r, c, part)
            if x2 is None and r != c:
                _write(result, c, r, transpose_tile(tile, compute))
                for name, part in parts.items() if return_layers else ():
                    _write(layer_parts[name], c, r, transpose_tile(part, compute))
    return (result, layer_parts) if return_layers else result


def _check_stream(
    bounds: StreamingBounds | None, x1: torch.Tensor, x2: torch.Tensor | None, compute: str
) -> None:
    if bounds is None:
        return
    if not isinstance(bounds, StreamingBounds):
        raise TypeError(f"bounds must be a StreamingBounds, got {type(bounds).__name__}")
    if x2 is not None or compute == "diagonal" or not bounds.upper:
        raise ValueError(
            "bounds= needs the symmetric kernel (x2=None), compute 'full' or 'trace', and a "
            "StreamingBounds(upper=True)"
        )
    if bounds.n != x1.shape[0]:
        raise ValueError(f"bounds was made for n={bounds.n} samples, x1 has {x1.shape[0]}")


def _feed(
    bounds: StreamingBounds | None,
    tile: Tile,
    total: torch.Tensor,
    parts: dict[str, torch.Tensor],
) -> None:
    if bounds is None:
        return
    r, c = tile
    bounds.update(r, c, total)
    if bounds.per_layer:
        for name, part in parts.items():
            bounds.update(r, c, part, layer=name)


def _write(dest: torch.Tensor | np.ndarray, r: slice, c: slice, tile: torch.Tensor) -> None:
    if isinstance(dest, np.ndarray):
        dest[r, c] = tile.detach().cpu().numpy()
    else:
        dest[r, c] = tile
