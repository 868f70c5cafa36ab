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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..gram import COMPUTE_MODES, gram_out_shape
from . import reference
from .capture import Capture, forward_with_cotangents, parametrised_modules, total_memory_bytes
from .rules import (
    ConvRoute,
    Features,
    SpatialFeatures,
    accumulate_pair,
    default_chunk,
    feature_bytes_per_sample,
)
from .rules import module_features as _module_features
from .stream import DenseAssembly, Tile, check_consumer, feed, wants_parts
from .symmetry import symmetrize_
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
# Builds the consumer for ``bounds=True`` (set by lplr_fast/__init__.py to StreamingBounds:
# the engine does not import the spectrum package).
_bounds_factory: Callable[..., Any] | None = None


def set_bounds_factory(factory: Callable[..., Any] | None) -> None:
    """Register what ``empirical_ntk(..., bounds=True)`` builds: ``factory(n, per_layer=...)``."""
    global _bounds_factory
    _bounds_factory = factory


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
        bn_eval: bool = False,
    ) -> None:
        self.model, self.x, self.compute, self.route, self.block = model, x, compute, route, block
        self.bn_eval = bn_eval
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
        with batchnorms_in_eval(self.model, self.bn_eval):
            return self._compute_block(xb)

    def _compute_block(self, xb: torch.Tensor) -> tuple[dict[str, list[Features]], int]:
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


def _choose_block_size(job: _Job, n_parts: int) -> int:
    """Largest block whose features (two blocks) and tile parts fit in an eighth of the
    device's *total* memory (so the tiling, hence the bits, do not depend on the machine's
    current load), from the feature size of a probe block of up to 4 samples."""
    probe = _BlockFeatures(
        job.model, job.x1, job.compute, job.route, block=4, cache_bytes=0, bn_eval=job.bn_eval
    )
    xb = job.x1[:4]
    _, nbytes = probe.compute_block(xb)
    per_sample = max(1, nbytes // xb.shape[0])
    k = probe.k or 1
    kk = k * k if job.compute == "full" else (k if job.compute == "diagonal" else 1)
    budget = total_memory_bytes(job.x1.device) // 8
    esize = torch.finfo(job.out_dtype).bits // 8
    by_features = budget // (4 * per_sample)
    by_tile = int(math.sqrt(budget / (4 * kk * esize * (n_parts + 1))))
    largest = int(max(1, min(job.x1.shape[0], by_features, by_tile, 4096)))
    return balanced_block(job.x1.shape[0], largest)


def balanced_block(n: int, largest: int) -> int:
    """Block size for n samples with blocks of at most ``largest``: the fewest blocks, of
    near-equal sizes (no ragged sliver of a tile), rounded up to a multiple of 32 when that
    still respects ``largest``."""
    count = -(-n // largest)
    block = -(-n // count)
    rounded = -(-block // 32) * 32
    return rounded if rounded <= largest else block


@dataclass
class _Job:
    """One validated request: the model (a dtype copy when asked), inputs and options."""

    model: nn.Module
    x1: torch.Tensor
    x2: torch.Tensor | None
    compute: str
    route: ConvRoute
    bn_eval: bool
    out_dtype: torch.dtype

    @property
    def n2(self) -> int:
        return self.x1.shape[0] if self.x2 is None else self.x2.shape[0]

    @property
    def symmetric(self) -> bool:
        return self.x2 is None


def _prepare(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    compute: str,
    implementation: str,
    dtype: torch.dtype | None,
    batchnorm: str,
    route: ConvRoute = "auto",
) -> _Job:
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute must be one of {sorted(COMPUTE_MODES)}, got {compute!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if route not in ("auto", "ghost", "materialize"):
        raise ValueError(f"conv_route must be 'auto', 'ghost' or 'materialize', got {route!r}")
    check_model(model, batchnorm)
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        x1 = x1.to(dtype) if torch.is_tensor(x1) and x1.is_floating_point() else x1
        x2 = x2.to(dtype) if torch.is_tensor(x2) and x2.is_floating_point() else x2
    check_inputs(model, x1, x2)
    out_dtype = next(iter(trainable_parameters(model).values())).dtype
    return _Job(model, x1, x2, compute, route, batchnorm == "eval", out_dtype)


def _tiles(
    job: _Job, block_size: int | None, want_parts: bool
) -> Iterator[tuple[slice, slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """The tile producer: ``(rows, cols, total, parts)`` for every tile (upper triangle only
    when x2 is None). No host synchronisation per tile; the model's state is only changed
    (BatchNorms put in eval) inside each block's forward, never while suspended."""
    names = list(parametrised_modules(job.model))
    if block_size is None:
        block_size = _choose_block_size(job, len(names) if want_parts else 0)
    x1, xs2 = job.x1, job.x1 if job.x2 is None else job.x2
    budget = available_memory_bytes(x1.device) // 8  # feature cache: does not change bits
    # Row blocks are visited once each, so only the column blocks are worth caching (with
    # x2=None the rows are the columns).
    rows = _BlockFeatures(
        job.model, x1, job.compute, job.route, block_size,
        budget if job.symmetric else 0, job.bn_eval,
    )  # fmt: skip
    cols = (
        rows
        if job.symmetric
        else _BlockFeatures(job.model, xs2, job.compute, job.route, block_size, budget, job.bn_eval)
    )
    n_row_blocks = -(-x1.shape[0] // block_size)
    n_col_blocks = -(-xs2.shape[0] // block_size)
    for bi in range(n_row_blocks):
        f1 = rows.get(bi)
        r = slice(bi * block_size, min(x1.shape[0], (bi + 1) * block_size))
        for bj in range(bi if job.symmetric else 0, n_col_blocks):
            c = slice(bj * block_size, min(xs2.shape[0], (bj + 1) * block_size))
            k = rows.k
            assert k is not None
            shape = gram_out_shape(r.stop - r.start, c.stop - c.start, k, job.compute)
            zeros = dict(dtype=job.out_dtype, device=x1.device)
            if want_parts:
                parts = {n: torch.zeros(shape, **zeros) for n in names}
                targets = parts
            else:  # one accumulator shared by all modules: no per-module tiles in memory
                parts = {TOTAL: torch.zeros(shape, **zeros)}
                targets = dict.fromkeys(names, parts[TOTAL])
            diagonal = job.symmetric and bi == bj
            _pair_blocks(targets, f1, None if diagonal else cols.get(bj), job.compute)
            if diagonal and (x1.device.type != "cpu" or _needs_symmetrising(f1)):
                for part in parts.values():
                    symmetrize_(part, job.compute)
            yield r, c, _tile_total(parts), ({} if TOTAL in parts else parts)


def _needs_symmetrising(features: dict[str, list[Features]]) -> bool:
    """Whether a diagonal tile may come out not exactly symmetric on the CPU: the CPU Gram
    kernel mirrors its upper triangle, but the ghost spatial contraction and the cross pairs
    of a module used several times compute both triangles with different roundings. (On a
    GPU the GEMM route computes both triangles of diagonal blocks: always symmetrised.)"""
    return any(
        len(uses) > 1 or isinstance(f, SpatialFeatures) for uses in features.values() for f in uses
    )


def _tile_total(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of a tile's parts (the tile itself when parts were not kept)."""
    if TOTAL in parts:
        return parts[TOTAL]
    values = list(parts.values())
    total = values[0].clone()
    for value in values[1:]:
        total += value
    return total


def _blocks(
    job: _Job, block_size: int | None, consumers: list[Any], want_parts: bool
) -> Iterator[tuple[slice, slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """The tile stream with its consumers fed: what ``ntk_blocks`` and ``empirical_ntk``
    both iterate. Consumers were checked by the caller, before any work."""
    want_parts = want_parts or wants_parts(consumers)
    for r, c, total, parts in _tiles(job, block_size, want_parts):
        for consumer in consumers:
            feed(consumer, r, c, total, parts)
        yield r, c, total, parts


def _check_block_size(block_size: int | None) -> None:
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


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
    bounds: Any = None,
) -> Iterator[tuple[Tile, Any]]:
    """Stream the structured empirical NTK tile by tile (the one producer of kernel tiles:
    :func:`empirical_ntk` assembles what this yields).

    Yields ``((rows, cols), tile)`` with ``rows``/``cols`` slices of x1/x2 and ``tile`` the
    kernel block Θ(x1[rows], x2[cols]) in the layout of ``compute`` (see
    :func:`empirical_ntk`). With ``x2=None`` only tiles with ``cols`` at or right of
    ``rows`` are yielded (the rest is their transpose, see :func:`transpose_tile`). With
    ``return_layers=True`` each tile is a pair ``(tile, parts)`` with ``parts`` a dict
    module name → that module's share of the tile. Memory: two blocks of features and one
    tile (per part) at a time. ``bounds``: a tile consumer (e.g. a
    :class:`lplr_fast.StreamingBounds`) fed every tile as it passes.

    Options are checked when the generator is created; the model is only touched (train-mode
    BatchNorms put in eval with ``batchnorm="eval"``) while a block's forward runs.
    """
    job = _prepare(model, x1, x2, compute, "structured", dtype, batchnorm, conv_route)
    _check_block_size(block_size)
    if batchnorm == "batch" and train_mode_batchnorms(job.model):
        raise ValueError(
            "batchnorm='batch' couples all samples of a batch and cannot be tiled; "
            "use empirical_ntk(..., batchnorm='batch') on the whole batch"
        )
    consumers = [] if bounds is None else [bounds]
    for consumer in consumers:
        check_consumer(
            consumer, n1=job.x1.shape[0], n2=job.n2, compute=job.compute, symmetric=job.symmetric
        )
    return _public_tiles(job, block_size, consumers, return_layers)


def _public_tiles(
    job: _Job, block_size: int | None, consumers: list[Any], return_layers: bool
) -> Iterator[tuple[Tile, Any]]:
    for r, c, total, parts in _blocks(job, block_size, consumers, return_layers):
        yield (r, c), ((total, parts) if return_layers else total)


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
    bounds: Any = None,
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
        block_size: samples per tile side; default from the problem's feature sizes and the
            device's total memory (deterministic: the same on every run of one machine).
        dtype: compute in this dtype (the model is copied, never modified).
        return_layers: also return a dict module name → that module's contribution.
        batchnorm: BatchNorm in training mode: "error" (default) raises; "eval" uses running
            statistics (model state untouched); "batch" computes the exact batch-coupled
            kernel with batch statistics (generic Jacobian path: slow, memory n·k·P).
        out: optional preallocated tensor or numpy array / memmap of the result's shape,
            filled tile by tile (structured only).
        conv_route: "auto" (cost model), "ghost" or "materialize" for conv layers.
        bounds: a tile consumer (``update(rows, cols, tile, layer=None)``, e.g. a
            :class:`lplr_fast.StreamingBounds` with n = len(x1)) fed every tile while the
            kernel is computed: trace, Frobenius norm, diagonal and Gershgorin bounds (and
            per-layer parts with ``per_layer=True``) without a second pass over the kernel.
            ``bounds=True`` makes a StreamingBounds (per-layer when ``return_layers``) and
            returns it last.

    Returns:
        The kernel (``out`` when given), then ``parts`` with ``return_layers`` and the
        :class:`StreamingBounds` with ``bounds=True``: ``kernel``, ``(kernel, parts)``,
        ``(kernel, stream)`` or ``(kernel, parts, stream)``.
    """
    job = _prepare(model, x1, x2, compute, implementation, dtype, batchnorm, conv_route)
    _check_block_size(block_size)
    if bounds is True:
        if _bounds_factory is None:
            raise TypeError("bounds=True needs lplr_fast imported (it builds a StreamingBounds)")
        stream = _bounds_factory(job.x1.shape[0], per_layer=return_layers)
        result = empirical_ntk(
            job.model, job.x1, job.x2, compute=compute, implementation=implementation,
            block_size=block_size, return_layers=return_layers, batchnorm=batchnorm, out=out,
            conv_route=conv_route, bounds=stream,
        )  # fmt: skip
        return (*result, stream) if return_layers else (result, stream)
    consumers = [] if bounds is None or bounds is False else [bounds]
    for consumer in consumers:
        check_consumer(
            consumer, n1=job.x1.shape[0], n2=job.n2, compute=job.compute, symmetric=job.symmetric
        )
    coupled = batchnorm == "batch" and bool(train_mode_batchnorms(job.model))
    if coupled or implementation != "structured":
        if out is not None:
            raise ValueError("out= is supported by implementation='structured' only")
        parts = _reference_parts(job, implementation, coupled, block_size)
        total = sum(parts.values())
        whole1, whole2 = slice(0, job.x1.shape[0]), slice(0, job.n2)
        for consumer in consumers:
            feed(consumer, whole1, whole2, total, parts)
        return (total, parts) if return_layers else total

    dense = DenseAssembly(
        n1=job.x1.shape[0], n2=job.n2, compute=compute, symmetric=job.symmetric,
        dtype=job.out_dtype, device=job.x1.device, out=out, per_layer=return_layers,
    )  # fmt: skip
    for r, c, total, parts in _blocks(job, block_size, [*consumers, dense], return_layers):
        del r, c, total, parts  # the consumers did the work
    dense.finish()
    return (dense.result, dense.parts) if return_layers else dense.result


def _reference_parts(
    job: _Job, implementation: str, coupled: bool, block_size: int | None
) -> dict[str, torch.Tensor]:
    with batchnorms_in_eval(job.model, job.bn_eval):
        if coupled:
            return reference.batch_coupled_ntk(job.model, job.x1, job.x2, job.compute)
        if implementation == "jacobian":
            return reference.jacobian_ntk(
                job.model, job.x1, job.x2, job.compute, block_size or job.x1.shape[0]
            )
        return reference.ntk_vp(job.model, job.x1, job.x2, job.compute)
