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
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..gram import COMPUTE_MODES, gram_out_shape
from . import reference
from .capture import (
    Capture,
    ModuleUse,
    cotangent_budget_bytes,
    forward_with_cotangents,
    model_output,
    total_memory_bytes,
)
from .plan import Plan, Route, build_plan
from .probe import ProbeCheck, ProbeMismatchError, ProbeReport
from .rules import (
    ConvRoute,
    Features,
    Group,
    SpatialFeatures,
    accumulate_pair,
    default_chunk,
    feature_bytes_per_sample,
    generic_features,
    implied_gradients,
    route_features,
)
from .stream import DenseAssembly, Tile, check_consumer, feed, wants_parts
from .symmetry import symmetrize_
from .validation import (
    StateGuard,
    check_dtypes,
    check_inputs,
    check_model,
    explain_input_dtype,
    forward_context,
    full_precision,
    train_mode_batchnorms,
    trainable_parameters,
    unwrap_compiled,
    usable_input,
    usable_model,
)

Implementation = Literal["structured", "jacobian", "ntk_vp"]
TOTAL = "<total>"  # key of the single accumulator when per-module parts are not wanted
IMPLEMENTATIONS = ("structured", "jacobian", "ntk_vp")
VERIFY_OPTIONS = ("probe", "sampled", "off")
Verify = Literal["probe", "sampled", "off"]
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
    """Per-block features, group key → list of features (one per use), with a byte-bounded
    cache so that column blocks are not recomputed when they fit."""

    def __init__(self, job: _Job, plan: Plan, x: torch.Tensor, block: int, cache: int) -> None:
        self.job, self.plan, self.x, self.block = job, plan, x, block
        self.capture = Capture({name: r.module for name, r in plan.routes.items()})
        self.cache: dict[int, dict[str, list[Features]]] = {}
        self.cache_bytes_left = cache
        self.part_of: dict[str, str] = {}

    def get(self, b: int) -> dict[str, list[Features]]:
        if b in self.cache:
            return self.cache[b]
        feats, nbytes = self.compute_block(self.x[b * self.block : (b + 1) * self.block])
        if nbytes <= self.cache_bytes_left:
            self.cache[b] = feats
            self.cache_bytes_left -= nbytes
        return feats

    def compute_block(self, xb: torch.Tensor) -> tuple[dict[str, list[Features]], int]:
        job = self.job
        with forward_context(job.model, job.bn_eval, job.guard):
            flat, uses = forward_with_cotangents(
                job.model, xb, self.capture, out_axes=self.plan.out_axes
            )
            groups = self.groups(xb, uses)
        del flat
        feats: dict[str, list[Features]] = {}
        for group in groups:
            feats.setdefault(group.key, []).append(group.features)
            self.part_of[group.key] = group.part
        nbytes = sum(feature_bytes_per_sample(f) for fs in feats.values() for f in fs)
        nbytes *= xb.shape[0]
        return feats, nbytes

    def groups(self, xb: torch.Tensor, uses: list[ModuleUse]) -> list[Group]:
        job, plan = self.job, self.plan
        k = plan.k
        kk = k * k if job.compute == "full" else k
        groups: list[Group] = []
        for use in uses:
            route = plan.routes[use.name]
            n_params = sum(p.numel() for p in route.params.values())
            chunk = default_chunk(xb.shape[0], k, n_params)
            groups += route_features(use, route, kk=kk, conv_route=job.route, chunk=chunk)
        budget = cotangent_budget_bytes(xb.device)
        return groups + generic_features(
            job.model, xb, plan.generic, k, budget, per_sample=plan.per_sample
        )


def _pair_blocks(
    targets: dict[str, torch.Tensor],
    f1: dict[str, list[Features]],
    f2: dict[str, list[Features]] | None,
    compute: str,
) -> None:
    """Accumulate every group's contribution of one tile into ``targets[group]``; each use in
    the row block is paired with each use of the same group in the column block."""
    for key, uses1 in f1.items():
        out = targets[key]
        if f2 is None:
            for u, fu in enumerate(uses1):
                for v, fv in enumerate(uses1):
                    accumulate_pair(out, fu, None if u == v else fv, compute)
        else:
            for fu in uses1:
                for fv in f2.get(key, []):
                    accumulate_pair(out, fu, fv, compute)


def _validation_rows(job: _Job) -> torch.Tensor:
    return job.x1[: min(job.x1.shape[0], 4)]


def _verify_routes(job: _Job, plan: Plan) -> int:
    """Check the plan on real samples: the gradient of Σ w_ic f_c(x_i) (random w) implied by
    every route's features must equal the sum of the samples' own gradients (each sample's
    forward and backward run alone); parameters whose routes disagree (used outside their
    module's call, a customised forward...) and modules whose per-sample gradients cannot be
    vmapped are rerouted. Refuses random models, NaN/Inf outputs and models whose samples
    interact in the forward; a backward pass that couples samples (the batch's gradient is
    not the sum of the samples') sets ``plan.per_sample``. Returns the per-sample feature
    bytes (for the block size)."""
    xv = _validation_rows(job)
    features = _BlockFeatures(job, plan, job.x1, block=xv.shape[0], cache=0)
    named = trainable_parameters(job.model)
    qualified = {id(p): q for q, p in named.items()}
    params = list(named.values())
    gen = torch.Generator().manual_seed(0)
    with forward_context(job.model, job.bn_eval, job.guard):
        flat, uses = forward_with_cotangents(
            job.model, xv, features.capture, out_axes=plan.out_axes
        )
        if flat.shape[1] != plan.k:
            raise RuntimeError("the model's number of outputs depends on the batch")
        w = torch.randn(flat.shape, generator=gen, dtype=torch.float64).to(flat)
        alone, separate = _single_sample_gradients(job.model, xv, w, params)
        with torch.no_grad():
            again = model_output(job.model, xv)
        _check_forwards(flat.detach(), again, alone, job.out_dtype)
        groups = _groups_with_fallbacks(features, plan, xv, uses)
        batch = torch.autograd.grad(flat, params, w, allow_unused=True)
    implied: dict[str, torch.Tensor] = {}
    for group in groups:
        for q, grad in implied_gradients(group.features, w).items():
            implied[q] = implied[q] + grad if q in implied else grad
    generic = {q for part in plan.generic.values() for q in part}
    checks = []  # (name, parameter, route difference, batch-vs-samples difference, scale)
    for p, b, t in zip(params, batch, separate, strict=True):
        q = qualified[id(p)]
        b = torch.zeros_like(p) if b is None else b
        routed = q not in generic  # generic parameters: only the coupling check applies
        got = implied.get(q, torch.zeros_like(p)) if routed else b
        scale = t.norm() + b.norm() + got.norm()
        checks.append((q, p, routed, torch.stack([(got - t).norm(), (b - t).norm(), scale])))
    diffs = torch.stack([c[3] for c in checks]).to(job.out_dtype).tolist() if checks else []
    eps = torch.finfo(job.out_dtype).eps
    why = (
        "its gradient differs from its module's rule (used outside the module's call, or "
        "the module's forward is not what its rule assumes)"
    )
    # Known couplers are per-sample whatever the validation rows show (their tokens may
    # repeat only across later samples).
    plan.per_sample = plan.per_sample or _scales_grad_by_frequency(job.model)
    for (q, p, routed, _), (route_diff, coupling_diff, scale) in zip(checks, diffs, strict=True):
        if not coupling_diff <= PLAN_SAFETY * eps * scale:
            plan.per_sample = True
        if routed and not route_diff <= PLAN_SAFETY * eps * scale:
            plan.move_to_generic(q, p, q.rpartition(".")[0], why)
    nbytes = sum(feature_bytes_per_sample(g.features) for g in groups)
    return max(1, nbytes)


def _scales_grad_by_frequency(model: nn.Module) -> bool:
    """Whether an embedding's backward scales by token counts in the batch."""
    return any(
        isinstance(m, nn.Embedding | nn.EmbeddingBag) and getattr(m, "scale_grad_by_freq", False)
        for m in model.modules()
    )


def _single_sample_gradients(
    model: nn.Module, xv: torch.Tensor, w: torch.Tensor, params: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each row of ``xv`` run alone: its outputs (n, k) and Σ_i ∂(w_i·f(x_i))/∂θ summed over
    the single-sample backward passes (per parameter)."""
    outputs = []
    total = [torch.zeros_like(p) for p in params]
    for i in range(xv.shape[0]):
        out = model_output(model, xv[i : i + 1])
        outputs.append(out.detach())
        grads = torch.autograd.grad(out, params, w[i : i + 1], allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc += g
    return torch.cat(outputs), total


def _check_forwards(
    flat: torch.Tensor, again: torch.Tensor, alone: torch.Tensor, dtype: torch.dtype
) -> None:
    """One synchronisation: outputs finite, the same for the same batch twice (no
    randomness), and the same for each sample run alone (no interaction between samples)."""
    finite = torch.isfinite(flat).all().to(flat.dtype)
    size = flat.abs().max() * finite
    values = torch.stack([size, (again - flat).abs().max(), (alone - flat).abs().max()])
    size, random_change, coupling = values.to(dtype).tolist()
    eps = torch.finfo(dtype).eps
    if not math.isfinite(size):
        raise ValueError(
            "the model's outputs contain NaN or Inf at these inputs (it overflows or divides "
            "by zero there): its NTK is undefined"
        )
    if not random_change <= PLAN_SAFETY * eps * size:
        raise ValueError(
            "the model's output is random: two forwards of the same batch differ by "
            f"{random_change:.3g} (dropout or other random layers in training mode, e.g. "
            "nn.MultiheadAttention(dropout=...) or a Transformer layer in train mode, "
            "F.dropout(..., training=True), nn.RReLU): its NTK is undefined. Call model.eval() "
            "(or remove the randomness) before computing the NTK."
        )
    if not coupling <= PLAN_SAFETY * eps * size:
        raise ValueError(
            "the model's output for a sample depends on the other samples of the batch (a "
            f"change of {coupling:.3g} when samples are run alone): batch statistics or "
            "other interactions between samples leave the per-sample NTK undefined. Put "
            "BatchNorm-like layers in eval mode (or batchnorm='eval'), or compute the "
            "batch-coupled kernel yourself with implementation='jacobian' on a model that "
            "takes the whole batch."
        )


PLAN_SAFETY = 2.0**10


def _groups_with_fallbacks(
    features: _BlockFeatures, plan: Plan, xv: torch.Tensor, uses: list[ModuleUse]
) -> list[Group]:
    """Features of the validation block; a ``module`` route whose vmap fails retries with
    plain autograd, and goes to the generic route if that fails too."""
    while True:
        try:
            return features.groups(xv, uses)
        except Exception:
            route = _first_failing_route(features, plan, xv, uses)
            if route is None:
                raise
            if route.rule == "module" and not route.autograd:
                route.autograd = True
            else:
                for rel, p in list(route.params.items()):
                    q = route.qualified[rel]
                    plan.move_to_generic(
                        q, p, q.rpartition(".")[0], f"module {route.name!r}: its rule failed"
                    )
                uses = [u for u in uses if u.name != route.name]


def _first_failing_route(
    features: _BlockFeatures, plan: Plan, xv: torch.Tensor, uses: list[ModuleUse]
) -> Route | None:
    k = plan.k
    kk = k * k if features.job.compute == "full" else k
    for use in uses:
        route = plan.routes.get(use.name)
        if route is None:
            continue
        try:
            route_features(use, route, kk=kk, conv_route=features.job.route, chunk=xv.shape[0])
        except Exception:
            return route
    return None


def _plan(job: _Job) -> tuple[Plan, int]:
    """The routing of every parameter, checked on real samples, and the feature bytes per
    sample of the plan's features."""
    with forward_context(job.model, job.bn_eval, job.guard), explain_input_dtype(job.x1):
        plan = build_plan(job.model, job.x1)
    per_sample = _verify_routes(job, plan)
    return plan, per_sample


def _choose_block_size(job: _Job, per_sample: int, k: int, n_parts: int) -> int:
    """Largest block whose features (two blocks) and tile parts fit in an eighth of the
    device's *total* memory (so the tiling, hence the bits, do not depend on the machine's
    current load); ``per_sample``: feature bytes per sample."""
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
    guard: StateGuard
    last_probe: ProbeReport | None = None

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
    model = unwrap_compiled(model)
    check_model(model, batchnorm)
    model = usable_model(model)
    x1, x2 = usable_input(x1), usable_input(x2)
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        x1 = x1.to(dtype) if torch.is_tensor(x1) and x1.is_floating_point() else x1
        x2 = x2.to(dtype) if torch.is_tensor(x2) and x2.is_floating_point() else x2
    check_dtypes(model)
    check_inputs(model, x1, x2)
    out_dtype = next(iter(trainable_parameters(model).values())).dtype
    return _Job(model, x1, x2, compute, route, batchnorm == "eval", out_dtype, StateGuard(model))


def _tiles(
    job: _Job, block_size: int | None, want_parts: bool, probe: list[ProbeCheck]
) -> Iterator[tuple[slice, slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """The tile producer: ``(rows, cols, total, parts)`` for every tile (upper triangle only
    when x2 is None). No host synchronisation per tile; the model is only touched (buffers,
    BatchNorm flags) inside each block's forward, never while suspended. ``probe``: filled
    with the verification consumer for this stream once the output count is known."""
    source = _source(job, block_size, want_parts)
    for check in probe:
        check.start(job, source.plan, source.block_size)
    yield from source.tiles()


@dataclass
class TileSource:
    """A planned tile stream: the producer behind :func:`ntk_blocks`, for writers that
    compute only some of its tiles (e.g. one rank's share, see ``lplr_fast.distributed``).

    Tile (bi, bj) covers rows ``bi·block_size ...`` of x1 and columns ``bj·block_size ...``
    of x2 (x1 when x2 is None, where only bj ≥ bi exist). Its bits do not depend on which
    other tiles are computed (features of a block come from one forward of that block)."""

    job: _Job
    plan: Plan
    block_size: int
    want_parts: bool

    @property
    def k(self) -> int:
        return self.plan.k

    @property
    def n1(self) -> int:
        return self.job.x1.shape[0]

    @property
    def n2(self) -> int:
        return self.job.n2

    @property
    def grid(self) -> tuple[int, int]:
        """(row blocks, column blocks)."""
        return -(-self.n1 // self.block_size), -(-self.n2 // self.block_size)

    def tiles(
        self, only: Collection[tuple[int, int]] | None = None
    ) -> Iterator[tuple[slice, slice, torch.Tensor, dict[str, torch.Tensor]]]:
        """``(rows, cols, total, parts)`` for every tile, or for the tiles (bi, bj) in
        ``only``, in row-major order (the order of :func:`ntk_blocks`)."""
        return _tile_loop(self.job, self.plan, self.block_size, self.want_parts, only)


def _source(job: _Job, block_size: int | None, want_parts: bool) -> TileSource:
    plan, per_sample = _plan(job)
    if block_size is None:
        n_parts = len(plan.parts()) if want_parts else 0
        block_size = _choose_block_size(job, per_sample, plan.k, n_parts)
    return TileSource(job, plan, block_size, want_parts)


def tile_source(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    compute: Literal["full", "trace", "diagonal"] = "full",
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    return_layers: bool = False,
    batchnorm: Literal["error", "eval"] = "error",
    conv_route: ConvRoute = "auto",
) -> TileSource:
    """Plan the tile stream of :func:`ntk_blocks` (same options) without running it: the
    output count ``k``, the block size (default as in :func:`ntk_blocks`) and a producer
    that can be restricted to a subset of tiles. No probe check is attached: a writer of
    a subset runs :class:`lplr_fast.ntk.probe.ProbeCheck` over the union of its parts."""
    job = _prepare(model, x1, x2, compute, "structured", dtype, batchnorm, conv_route)
    _check_options(block_size, "off", "raise")
    if train_mode_batchnorms(job.model) and batchnorm != "eval":
        raise ValueError("BatchNorm in train mode: pass batchnorm='eval'")
    return _source(job, block_size, return_layers)


def _tile_loop(
    job: _Job,
    plan: Plan,
    block_size: int,
    want_parts: bool,
    only: Collection[tuple[int, int]] | None,
) -> Iterator[tuple[slice, slice, torch.Tensor, dict[str, torch.Tensor]]]:
    names = plan.parts()
    x1, xs2 = job.x1, job.x1 if job.x2 is None else job.x2
    budget = available_memory_bytes(x1.device) // 8  # feature cache: does not change bits
    # Row blocks are visited once each, so only the column blocks are worth caching (with
    # x2=None the rows are the columns).
    rows = _BlockFeatures(job, plan, x1, block_size, budget if job.symmetric else 0)
    cols = rows if job.symmetric else _BlockFeatures(job, plan, xs2, block_size, budget)
    n_row_blocks = -(-x1.shape[0] // block_size)
    n_col_blocks = -(-xs2.shape[0] // block_size)
    wanted = None if only is None else set(only)
    for bi in range(n_row_blocks):
        col_range = range(bi if job.symmetric else 0, n_col_blocks)
        todo = [bj for bj in col_range if wanted is None or (bi, bj) in wanted]
        if not todo:
            continue
        f1 = rows.get(bi)
        r = slice(bi * block_size, min(x1.shape[0], (bi + 1) * block_size))
        for bj in todo:
            c = slice(bj * block_size, min(xs2.shape[0], (bj + 1) * block_size))
            shape = gram_out_shape(r.stop - r.start, c.stop - c.start, plan.k, job.compute)
            zeros = dict(dtype=job.out_dtype, device=x1.device)
            diagonal = job.symmetric and bi == bj
            f2 = None if diagonal else cols.get(bj)
            part_of = {**rows.part_of, **cols.part_of}
            if want_parts:
                parts = {n: torch.zeros(shape, **zeros) for n in names}
                targets = {key: parts[part] for key, part in part_of.items()}
            else:  # one accumulator shared by all groups: no per-module tiles in memory
                parts = {TOTAL: torch.zeros(shape, **zeros)}
                targets = dict.fromkeys(part_of, parts[TOTAL])
            with full_precision():
                _pair_blocks(targets, f1, f2, job.compute)
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


class _DeferredProbe:
    """The probe consumer, made once the stream knows k, its block size and whether the
    model's backward couples samples. ``coverage``: "all" or "sampled" (see probe.py)."""

    def __init__(self, coverage: str) -> None:
        self.coverage = coverage
        self.check: ProbeCheck | None = None

    def start(self, job: _Job, plan: Plan, block_size: int) -> None:
        self.check = ProbeCheck(
            job.model, job.x1, job.x2, compute=job.compute, k=plan.k, bn_eval=job.bn_eval,
            guard=job.guard, block_size=block_size, coverage=self.coverage,
            per_sample=plan.per_sample,
        )  # fmt: skip

    def update(self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None):
        assert self.check is not None
        self.check.update(rows, cols, tile, layer)

    def finish(self) -> ProbeReport | None:
        return None if self.check is None else self.check.finish()


def _blocks(
    job: _Job, block_size: int | None, consumers: list[Any], want_parts: bool, verify: str
) -> Iterator[tuple[slice, slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """The tile stream with its consumers fed and, unless ``verify="off"``, checked at its
    end (:class:`ProbeMismatchError`): what ``ntk_blocks`` and ``empirical_ntk`` iterate.
    Consumers were checked by the caller, before any work."""
    want_parts = want_parts or wants_parts(consumers)
    coverage = "sampled" if verify == "sampled" else "all"
    probe = [_DeferredProbe(coverage)] if verify != "off" else []
    for r, c, total, parts in _tiles(job, block_size, want_parts, probe):
        for consumer in [*probe, *consumers]:
            feed(consumer, r, c, total, parts)
        yield r, c, total, parts
    for check in probe:
        job.last_probe = check.finish()


def routes(
    model: nn.Module,
    x: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    batchnorm: Literal["error", "eval", "batch"] = "error",
) -> dict[str, str]:
    """How :func:`empirical_ntk` computes each trainable parameter's share of the kernel on
    inputs like ``x``: "linear" / "conv" (structured Gram rules), "module" (per-sample
    gradients of the module's parameters from its output cotangents; "module (autograd)"
    where vmap cannot run the module), or "generic: <reason>" (per-sample gradients of the
    whole network: exact, slower). Keys are parameter names."""
    job = _prepare(model, x, None, "full", "structured", dtype, batchnorm)
    plan, _ = _plan(job)
    out: dict[str, str] = {}
    for route in plan.routes.values():
        label = route.rule + (" (autograd)" if route.autograd else "")
        out.update(dict.fromkeys(route.qualified.values(), label))
    for params in plan.generic.values():
        for q in params:
            out[q] = f"generic: {plan.reasons.get(q, 'unknown')}"
    return dict(sorted(out.items()))


def _check_options(block_size: int | None, verify: str, on_mismatch: str) -> None:
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if verify not in VERIFY_OPTIONS:
        raise ValueError(f"verify must be one of {VERIFY_OPTIONS}, got {verify!r}")
    if on_mismatch not in ("raise", "fallback"):
        raise ValueError(f"on_mismatch must be 'raise' or 'fallback', got {on_mismatch!r}")


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
    verify: Verify = "probe",
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

    ``verify="probe"`` (default; "sampled" and "off" as in :func:`empirical_ntk`) accumulates
    the random-probe check of :mod:`.probe` over the tiles and runs its autograd side after
    the last one: the generator then raises
    :class:`ProbeMismatchError` instead of finishing if the kernel was wrong (tiles already
    consumed, and consumers fed, are then not to be trusted). Stopping early skips it.

    Options are checked when the generator is created; the model is only touched (train-mode
    BatchNorms put in eval with ``batchnorm="eval"``, buffers restored) while a block's
    forward runs.
    """
    job = _prepare(model, x1, x2, compute, "structured", dtype, batchnorm, conv_route)
    _check_options(block_size, verify, "raise")
    if batchnorm == "batch" and train_mode_batchnorms(job.model):
        raise ValueError(
            "batchnorm='batch' couples all samples of a batch and cannot be tiled; "
            "use empirical_ntk(..., batchnorm='batch') on the whole batch"
        )
    consumers = [] if bounds is None else [bounds]
    _check_consumers(job, consumers)
    return _public_tiles(job, block_size, consumers, return_layers, verify)


def _check_consumers(job: _Job, consumers: list[Any]) -> None:
    for consumer in consumers:
        check_consumer(
            consumer, n1=job.x1.shape[0], n2=job.n2, compute=job.compute, symmetric=job.symmetric
        )


def _public_tiles(
    job: _Job, block_size: int | None, consumers: list[Any], return_layers: bool, verify: str
) -> Iterator[tuple[Tile, Any]]:
    for r, c, total, parts in _blocks(job, block_size, consumers, return_layers, verify):
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
    verify: Verify = "probe",
    on_mismatch: Literal["raise", "fallback"] = "raise",
) -> Any:
    """Empirical NTK Θ(x1, x2) = J(x1) J(x2)ᵀ of ``model``'s outputs w.r.t. its trainable
    parameters.

    Args:
        model: maps a batch (n, ...) to outputs (n, ...) flattened per sample to k outputs.
            Any ``nn.Module`` (see README, "What models are supported"); never modified.
        x1: (n1, ...) inputs; x2: (n2, ...) inputs or None for x2 = x1 (symmetry exploited).
        compute: "full" → (n1, n2, k, k); "trace" → (n1, n2), summed over outputs c = c';
            "diagonal" → (n1, n2, k), output c with output c. (neural-tangents'
            ``trace_axes=()`` is "full"; note that its default *averages* over outputs.)
        implementation: "structured" (per-layer Gram identities, the fast path),
            "jacobian" (per-sample Jacobians + contraction) or "ntk_vp" (VJP/JVP
            NTK-vector products), the last two as references.
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
        verify: "probe" (default) checks the structured kernel against plain autograd with
            random probes uᵀΘv = (J₁ᵀu)·(J₂ᵀv) over every sample (see
            :mod:`lplr_fast.ntk.probe`; cost one forward and one backward pass over the data
            in "full" mode, one forward and k output-batched backward passes over the data
            in "trace"/"diagonal", per side); "sampled" probes only one sample in 64 in
            "trace"/"diagonal" (cheaper; a wrong kernel confined to unprobed samples passes
            unseen); "off" skips it.
        on_mismatch: what a failed check does: "raise" (:class:`ProbeMismatchError`, the
            default) or "fallback" (warn, recompute with ``implementation="jacobian"``, fill
            ``out``, and feed ``bounds`` only then).

    Returns:
        The kernel (``out`` when given), then ``parts`` with ``return_layers`` and the
        :class:`StreamingBounds` with ``bounds=True``: ``kernel``, ``(kernel, parts)``,
        ``(kernel, stream)`` or ``(kernel, parts, stream)``.
    """
    job = _prepare(model, x1, x2, compute, implementation, dtype, batchnorm, conv_route)
    _check_options(block_size, verify, on_mismatch)
    if bounds is True:
        if _bounds_factory is None:
            raise TypeError("bounds=True needs lplr_fast imported (it builds a StreamingBounds)")
        stream = _bounds_factory(job.x1.shape[0], per_layer=return_layers)
        result = empirical_ntk(
            job.model, job.x1, job.x2, compute=compute, implementation=implementation,
            block_size=block_size, return_layers=return_layers, batchnorm=batchnorm, out=out,
            conv_route=conv_route, bounds=stream, verify=verify, on_mismatch=on_mismatch,
        )  # fmt: skip
        return (*result, stream) if return_layers else (result, stream)
    consumers = [] if bounds is None or bounds is False else [bounds]
    _check_consumers(job, consumers)
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

    defer = on_mismatch == "fallback" and bool(consumers)
    per_layer = return_layers or (defer and wants_parts(consumers))
    dense = DenseAssembly(
        n1=job.x1.shape[0], n2=job.n2, compute=compute, symmetric=job.symmetric,
        dtype=job.out_dtype, device=job.x1.device, out=out, per_layer=per_layer,
    )  # fmt: skip
    fed = [dense] if defer else [*consumers, dense]
    tiles: list[Tile] = []
    try:
        for r, c, _, _ in _blocks(job, block_size, fed, per_layer, verify):
            tiles.append((r, c))
    except ProbeMismatchError as err:
        if on_mismatch == "raise":
            raise
        _fallback(job, dense, err, tiles)
    dense.finish()
    if defer:
        _feed_stored(consumers, dense, tiles)
    if return_layers:
        return dense.result, dense.parts
    return dense.result


def _fallback(job: _Job, dense: DenseAssembly, err: ProbeMismatchError, tiles: list[Tile]):
    """Recompute the kernel with the reference path into ``dense`` after a failed check."""
    warnings.warn(
        f"{err} Falling back to implementation='jacobian' (exact, slower).",
        RuntimeWarning,
        stacklevel=3,
    )
    parts = _reference_parts(job, "jacobian", False, None)
    whole1, whole2 = slice(0, job.x1.shape[0]), slice(0, job.n2)
    dense.finish()  # pending host writes of the failed pass land first
    symmetric, dense.symmetric = dense.symmetric, False
    try:
        feed(dense, whole1, whole2, sum(parts.values()), parts)
    finally:
        dense.symmetric = symmetric


def _feed_stored(consumers: list[Any], dense: DenseAssembly, tiles: list[Tile]) -> None:
    """Feed the consumers from the stored (verified or recomputed) kernel, tile by tile."""
    for r, c in tiles:
        result = dense.result
        block = result[r, c]
        total = torch.from_numpy(np.asarray(block)) if isinstance(result, np.ndarray) else block
        parts = {name: part[r, c] for name, part in dense.parts.items()}
        for consumer in consumers:
            feed(consumer, r, c, total, parts)


def _reference_parts(
    job: _Job, implementation: str, coupled: bool, block_size: int | None
) -> dict[str, torch.Tensor]:
    with forward_context(job.model, job.bn_eval, job.guard):
        if not coupled and not torch.is_floating_point(job.x1):
            # Integer / boolean inputs: one sample first, so a model that cannot take them
            # gets an error saying so. (Not in "batch" mode: that works on a copy, and
            # train-mode BatchNorms update running statistics without a version bump.)
            with torch.no_grad(), explain_input_dtype(job.x1):
                model_output(job.model, job.x1[:1])
        if coupled:
            return reference.batch_coupled_ntk(job.model, job.x1, job.x2, job.compute)
        if implementation == "jacobian":
            return reference.jacobian_ntk(job.model, job.x1, job.x2, job.compute, block_size)
        return reference.ntk_vp(job.model, job.x1, job.x2, job.compute)
