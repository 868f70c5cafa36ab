"""Matrix-free and store-backed NTK products across ranks, and the bounds they give.

* :class:`DistributedNTKOperator`: samples sharded over the ranks (rank r owns a contiguous
  slice). Θv = J(Jᵀv): each rank pulls its samples' share of Jᵀv with local VJPs, one
  all-reduce of P parameters sums the shares, and each rank pushes the sum through its own
  samples with JVPs: its rows of Θv. Bytes all-reduced per product: P × itemsize.
* :func:`sharded_lanczos`: Lanczos with every vector sharded like the samples; dot products
  and the reorthogonalisation coefficients are all-reduced (a few scalars per step on top
  of the operator's P values).
* :class:`StoreOperator`: Θv over a finished tile store, each rank multiplying its tiles
  (kept in memory when ``cache``) and one all-reduce of the n·k result.
* :func:`lanczos_bounds` and :func:`store_bounds`: the brackets, labelled. Lanczos gives
  estimates (λ_max ∈ [θ_max, θ_max + ‖r‖], λ_min ≤ θ_min for the Ritz value), never
  certified; a certified λ_min needs a factorisation, done on rank 0 when the stored kernel
  has n·k ≤ ``dense_limit`` (12 000 on a CPU, ≈ 46 000 on a 141 GB GPU: four float64 copies
  in half the memory); beyond that the certified brackets are the streaming ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.func import jvp, vjp

from ..fingerprint import data_fingerprint, model_fingerprint
from ..ntk.engine import _prepare, available_memory_bytes
from ..ntk.reference import functional
from ..ntk.validation import batchnorms_in_eval, train_mode_batchnorms
from ..spectrum import SpectrumBounds, StreamingBounds, eig_bounds
from ..spectrum.bounds import dense_limit as device_dense_limit
from ..spectrum.lanczos import LanczosResult, _tridiagonal_eigh, lanczos
from .group import agree, all_reduce_, broadcast, gather, rank_and_size
from .schedule import shard, split
from .store import StoredKernel, StoreError

START_CHUNK = 1 << 16  # the start vector is drawn in chunks: any shard without the rest


class DistributedNTKOperator:
    """Θ(x, x) of ``model``, (n·k) × (n·k), sample-major, with samples sharded over ranks.

    Args:
        model: as for :class:`lplr_fast.NTKOperator` (never modified); the same on every rank.
        x: (n, ...) all inputs on every rank (only this rank's slice is run).
        dtype, batchnorm, chunk_size: as for :class:`lplr_fast.NTKOperator`.
        group: the process group (default: the global one).

    Attributes:
        shape: (n·k, n·k); ``rows``: this rank's samples (a slice); ``local_size``: its rows
        of a vector (samples × k); ``psd`` True; ``matvecs``: products so far.
    """

    psd = True

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        dtype: torch.dtype | None = None,
        batchnorm: Literal["error", "eval"] = "error",
        chunk_size: int | None = None,
        group: Any = None,
    ) -> None:
        if batchnorm not in ("error", "eval"):
            raise ValueError(f"batchnorm must be 'error' or 'eval', got {batchnorm!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        job = _prepare(model, x, None, "full", "ntk_vp", dtype, batchnorm)
        if train_mode_batchnorms(job.model) and batchnorm != "eval":
            raise ValueError("BatchNorm in train mode: pass batchnorm='eval'")
        self.model, self.x, self.batchnorm, self.group = job.model, job.x1, batchnorm, group
        self.params, self.f_batch, _ = functional(job.model)
        ref = next(iter(self.params.values()))
        self.dtype, self.device = ref.dtype, ref.device
        with batchnorms_in_eval(self.model, batchnorm == "eval"):
            k = self.f_batch(self.params, self.x[:1]).shape[1]
        identity = {
            "model": model_fingerprint(self.model), "data": data_fingerprint(self.x),
            "batchnorm": batchnorm,
        }  # fmt: skip
        agree(identity, "NTK operator (model, data, options)", group)
        rank, world = rank_and_size(group)
        self.n, self.k = self.x.shape[0], k
        self.shape = (self.n * k, self.n * k)
        self.rows = shard(self.n, rank, world)
        self.local_size = (self.rows.stop - self.rows.start) * k
        self.chunk = chunk_size or max(1, self.rows.stop - self.rows.start)
        self.matvecs = 0

    def _chunks(self) -> list[slice]:
        lo, hi = self.rows.start, self.rows.stop
        return [slice(s, min(hi, s + self.chunk)) for s in range(lo, hi, self.chunk)]

    def pull(self, v_local: torch.Tensor) -> dict[str, torch.Tensor]:
        """Jᵀv summed over all ranks (every rank gets the same dict), from this rank's rows."""
        cot = v_local.to(dtype=self.dtype, device=self.device).reshape(-1, self.k)
        pulled = {name: torch.zeros_like(p) for name, p in self.params.items()}
        with batchnorms_in_eval(self.model, self.batchnorm == "eval"):
            for rows in self._chunks():
                xb = self.x[rows]
                _, pullback = vjp(lambda th, xb=xb: self.f_batch(th, xb), self.params)
                part = pullback(cot[rows.start - self.rows.start : rows.stop - self.rows.start])[0]
                for name in pulled:
                    pulled[name] += part[name]
        names = sorted(pulled)
        all_reduce_([pulled[n] for n in names], "the NTK operator's Jᵀv all-reduce", self.group)
        return pulled

    def push(self, pulled: dict[str, torch.Tensor]) -> torch.Tensor:
        """J(pulled) on this rank's samples: its rows of the product, (local_size,)."""
        out = []
        with batchnorms_in_eval(self.model, self.batchnorm == "eval"):
            for rows in self._chunks():
                xb = self.x[rows]
                out.append(
                    jvp(lambda th, xb=xb: self.f_batch(th, xb), (self.params,), (pulled,))[1]
                )
        if not out:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat(out).reshape(-1)

    def matvec_local(self, v_local: torch.Tensor) -> torch.Tensor:
        """(Θv) restricted to this rank's rows, from v restricted to them (a collective)."""
        if v_local.shape != (self.local_size,):
            raise ValueError(f"v_local must have shape ({self.local_size},), got {v_local.shape}")
        self.matvecs += 1
        return self.push(self.pull(v_local))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Θv for a whole vector (the same on every rank), gathered on every rank: what
        ``eig_bounds(op, method="lanczos")`` calls. Costs one more all-gather of n·k."""
        if v.shape != (self.shape[0],):
            raise ValueError(f"v must have shape ({self.shape[0]},), got {tuple(v.shape)}")
        lo, hi = self.rows.start * self.k, self.rows.stop * self.k
        mine = self.matvec_local(v[lo:hi])
        return _all_gather_rows(mine, self.shape[0], self.k, self.n, self.group)


def _all_gather_rows(mine: torch.Tensor, size: int, k: int, n: int, group: Any) -> torch.Tensor:
    rank, world = rank_and_size(group)
    if world == 1:
        return mine
    from .group import collective, collective_device

    device = collective_device(group)
    full = torch.zeros(size, dtype=mine.dtype, device=device)
    lo = shard(n, rank, world).start * k
    full[lo : lo + mine.numel()] = mine.to(device)
    with collective("the NTK operator's result all-reduce", group):
        dist.all_reduce(full, group=group)
    return full.to(mine.device)


def _sharded_start(total: int, rows: slice, seed: int, dtype, device) -> torch.Tensor:
    """Entries [rows] of a Gaussian vector of length ``total`` drawn in fixed chunks, each
    from its own seed: the same global vector whatever the sharding."""
    parts = []
    first, last = rows.start // START_CHUNK, -(-rows.stop // START_CHUNK)
    for c in range(first, last):
        lo, hi = c * START_CHUNK, min(total, (c + 1) * START_CHUNK)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        chunk = torch.randn(hi - lo, generator=gen, dtype=torch.float64)
        a, b = max(lo, rows.start), min(hi, rows.stop)
        parts.append(chunk[a - lo : b - lo])
    vec = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return vec.to(device=device, dtype=dtype)


def _global_norm(v: torch.Tensor, group: Any) -> torch.Tensor:
    """‖v‖₂ over all shards without overflow (max scaling), two tiny all-reduces."""
    m = v.abs().amax() if v.numel() else torch.zeros((), dtype=v.dtype, device=v.device)
    box = [m.reshape(1)]
    all_reduce_(box, "Lanczos norm (max)", group, op=dist.ReduceOp.MAX)
    m = box[0][0]
    scale = torch.where(m > 0, m, torch.ones_like(m))
    sq = ((v / scale) ** 2).sum().reshape(1)
    box = [sq]
    all_reduce_(box, "Lanczos norm (sum)", group)
    return torch.sqrt(box[0][0]) * scale


def sharded_lanczos(
    matvec_local: Any,
    local_rows: slice,
    total: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    max_iter: int = 300,
    rtol: float = 1e-6,
    want_min: bool = False,
    seed: int = 0,
    group: Any = None,
) -> LanczosResult:
    """:func:`lplr_fast.spectrum.lanczos` with vectors sharded over the ranks: rank r holds
    entries ``local_rows`` of every vector; ``matvec_local`` maps a shard of v to the same
    shard of Av (collectively). Same stopping rule; Ritz vectors are returned as shards.
    Every rank runs the same steps (the scalars are all-reduced; the arguments that decide
    the number of steps are checked to agree before the first)."""
    agree(
        {"total": total, "max_iter": max_iter, "rtol": rtol, "want_min": want_min,
         "seed": seed, "dtype": str(dtype)},
        "arguments of sharded_lanczos", group,
    )  # fmt: skip
    q = _sharded_start(total, local_rows, seed, dtype, device)
    q = q / _global_norm(q, group)
    steps = min(total, max_iter)
    local = local_rows.stop - local_rows.start
    basis = torch.empty(steps + 1, local, dtype=dtype, device=q.device)
    basis[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    evals: list[float] = []
    evecs = None
    res_min = res_max = 0.0
    for m in range(steps):
        w = matvec_local(basis[m]).to(dtype)
        coeffs = [basis[: m + 1] @ w]
        all_reduce_(coeffs, "Lanczos reorthogonalisation", group)
        alpha_t = coeffs[0][m].clone()
        w = w - basis[: m + 1].T @ coeffs[0]
        coeffs = [basis[: m + 1] @ w]  # twice is enough
        all_reduce_(coeffs, "Lanczos reorthogonalisation", group)
        w = w - basis[: m + 1].T @ coeffs[0]
        alpha, beta = torch.stack([alpha_t, _global_norm(w, group)]).tolist()
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(
                f"the operator's product {m + 1} is not finite (NaN/Inf): its entries or "
                "norm exceed the float range; scale it by a power of two"
            )
        alphas.append(alpha)
        evals, evecs = _tridiagonal_eigh(alphas, betas)
        res_max = abs(beta * float(evecs[-1, -1]))
        res_min = abs(beta * float(evecs[-1, 0]))
        size = max(abs(evals[0]), abs(evals[-1]))
        done = res_max <= rtol * size and (not want_min or res_min <= rtol * size)
        if done or m + 1 == steps or beta <= 1e-14 * size:
            break
        betas.append(beta)
        basis[m + 1] = w / beta
    assert evecs is not None
    used = len(alphas)
    v = basis[:used].T @ evecs.to(dtype=dtype, device=basis.device)
    return LanczosResult(evals[0], evals[-1], res_min, res_max, v[:, 0], v[:, -1], used)


class StoreOperator:
    """Θ·v over a finished tile store (full: (n·k)², trace: n²), tiles split over the ranks
    like the computation; each product is the same on every rank (one all-reduce of the
    result). ``cache``: keep this rank's tiles in memory (float64, on ``device``) after the
    first product instead of rereading them."""

    psd = True

    def __init__(
        self,
        store: StoredKernel,
        *,
        group: Any = None,
        cache: bool = True,
        device: torch.device | str = "cpu",
        cache_bytes: int | None = None,
    ) -> None:
        if store.compute == "diagonal":
            raise ValueError(
                "a 'diagonal' store holds k separate kernels; compute 'full' or 'trace'"
            )
        if not store.symmetric:
            raise ValueError("Θ·v needs the symmetric kernel Θ(x, x) (x2 = None)")
        if not store.complete:
            raise StoreError(
                f"{store.path}: {len(store.missing())} tiles are missing; finish the store first"
            )
        self.store, self.group, self.cache = store, group, cache
        self.device = torch.device(device)
        self.dtype = torch.float64
        size = store.config["n1"] * (store.k if store.compute == "full" else 1)
        self.shape = (size, size)
        self.unit = store.k if store.compute == "full" else 1
        rank, world = rank_and_size(group)
        self.tiles = split(store.grid, world)[rank]
        self._cached: dict[Any, torch.Tensor] = {}
        if cache_bytes is None:
            cache_bytes = available_memory_bytes(self.device) // 4 if cache else 0
        self._cache_left = cache_bytes if cache else 0
        self.matvecs = 0

    def _tile(self, tile: Any) -> torch.Tensor:
        if tile in self._cached:
            return self._cached[tile]
        t = self.store.matrix_tile(tile).to(device=self.device, dtype=torch.float64)
        nbytes = t.numel() * t.element_size()
        if nbytes <= self._cache_left:
            self._cached[tile] = t
            self._cache_left -= nbytes
        return t

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.shape[0],):
            raise ValueError(f"v must have shape ({self.shape[0]},), got {tuple(v.shape)}")
        v = v.to(device=self.device, dtype=torch.float64)
        out = torch.zeros_like(v)
        u = self.unit
        for tile in self.tiles:
            rows, cols = self.store.grid.slices(tile)
            r = slice(rows.start * u, rows.stop * u)
            c = slice(cols.start * u, cols.stop * u)
            t = self._tile(tile)
            out[r] += t @ v[c]
            if tile[0] != tile[1]:
                out[c] += t.T @ v[r]
        all_reduce_([out], "the store operator's all-reduce", self.group)
        self.matvecs += 1
        return out

    __matmul__ = matvec


def lanczos_bounds(
    op: DistributedNTKOperator | StoreOperator,
    *,
    rtol: float = 1e-6,
    max_iter: int = 300,
    want_min: bool = True,
    seed: int = 0,
) -> SpectrumBounds:
    """Lanczos estimates from a distributed operator (every rank gets the same numbers):
    λ_max ∈ [θ_max, θ_max + ‖r‖] and λ_min ∈ [0, θ_min] (PSD; θ_min is the Ritz value).
    Not certified (``certified_* = False``): see the module docstring. A Ritz value θ_min
    below 0 (rounding, for a singular PSD kernel) is reported as the estimate 0: λ_min ∈
    [0, max(θ_min, 0)]."""
    t0 = time.perf_counter()
    n = op.shape[0]
    agree(
        {"operator": type(op).__name__, "shape": tuple(op.shape), "rtol": rtol,
         "max_iter": max_iter, "want_min": want_min, "seed": seed},
        "arguments of lanczos_bounds", op.group,
    )  # fmt: skip
    if isinstance(op, DistributedNTKOperator):
        lo = op.rows.start * op.k
        rows = slice(lo, lo + op.local_size)
        lz = sharded_lanczos(
            op.matvec_local, rows, n, dtype=op.dtype, device=op.device, max_iter=max_iter,
            rtol=rtol, want_min=want_min, seed=seed, group=op.group,
        )  # fmt: skip
    else:
        lz = lanczos(
            op.matvec, n, dtype=op.dtype, device=op.device, max_iter=max_iter, rtol=rtol,
            want_min=want_min, seed=seed,
        )  # fmt: skip
    hi_min = max(lz.theta_min, 0.0) if want_min else math.inf
    return SpectrumBounds(
        0.0, hi_min, lz.theta_max, lz.theta_max + lz.resid_max, False, False,
        "lanczos (distributed)", lz.matvecs, time.perf_counter() - t0, n,
    )  # fmt: skip


@dataclass
class StoreBounds:
    """Bounds of a stored kernel, each labelled: ``streaming`` (certified: Gershgorin,
    trace, Frobenius), ``dense`` (certified λ_min/λ_max brackets from a factorisation on
    rank 0; None beyond ``dense_limit``, with ``dense_skipped`` saying why), ``lanczos``
    (estimates)."""

    streaming: SpectrumBounds
    dense: SpectrumBounds | None
    lanczos: SpectrumBounds | None
    dense_skipped: str = ""


def stream_store(store: StoredKernel, group: Any = None) -> StreamingBounds:
    """The streaming bounds of a finished store: each rank feeds its tiles, the exact
    statistics are merged on rank 0 and shared."""
    rank, world = rank_and_size(group)
    local = StreamingBounds(store.config["n1"], record=True)
    for tile in split(store.grid, world)[rank]:
        rows, cols = store.grid.slices(tile)
        local.update(rows, cols, torch.from_numpy(store.tile(tile)))
    parts = gather(local.export(), "gathering the store's streaming statistics", group)
    merged = StreamingBounds.merged(parts) if parts is not None else None
    return broadcast(merged, "sharing the store's streaming bounds", group)


def store_bounds(
    store: StoredKernel,
    *,
    group: Any = None,
    dense_limit: int | None = None,
    lanczos: bool = True,
    rtol: float = 1e-6,
    device: torch.device | str = "cpu",
    streaming: SpectrumBounds | None = None,
) -> StoreBounds:
    """Certified and estimated eigenvalue bounds of a finished symmetric store (module
    docstring). ``dense_limit``: the largest n·k factorised on rank 0 (default
    ``lplr_fast.spectrum.bounds.dense_limit`` of rank 0's ``device``, shared with every rank).
    Arguments that decide the collectives (``dense_limit``, ``lanczos``, ``rtol``, whether
    ``streaming`` is given) must agree across ranks (checked first). ``streaming``: the store's
    streaming bounds if already known (``DistributedNTK.bounds``), else one pass over the
    tiles computes them."""
    if store.compute == "diagonal" or not store.symmetric:
        raise ValueError("store_bounds needs a symmetric 'full' or 'trace' kernel")
    agree(
        {"store": str(store.path), "fingerprint": store.config.get("fingerprint"),
         "dense_limit": dense_limit, "lanczos": lanczos, "rtol": rtol,
         "streaming given": streaming is not None},
        "arguments of store_bounds", group,
    )  # fmt: skip
    if streaming is None:
        streaming = stream_store(store, group).bounds()
    size = store.config["n1"] * (store.k if store.compute == "full" else 1)
    if dense_limit is None:  # rank 0 factorises: its device decides, for every rank
        limit = broadcast(
            device_dense_limit(torch.device(device)), "agreeing on the dense limit", group
        )
    else:
        limit = dense_limit
    dense, skipped = None, ""
    if size <= limit:
        result: Any = None
        if rank_and_size(group)[0] == 0:
            kernel = store.to_dense().to(device=device, dtype=torch.float64)
            result = eig_bounds(kernel)
        dense = broadcast(result, "sharing the dense certificate", group)
    else:
        skipped = (
            f"n·k = {size} exceeds the dense limit {limit} (one rank factorises the whole "
            "kernel): λ_min is certified only by the streaming bracket"
        )
    estimate = None
    if lanczos:
        estimate = lanczos_bounds(StoreOperator(store, group=group, device=device), rtol=rtol)
    return StoreBounds(streaming, dense, estimate, skipped)


__all__ = [
    "DistributedNTKOperator",
    "StoreBounds",
    "StoreOperator",
    "lanczos_bounds",
    "sharded_lanczos",
    "store_bounds",
    "stream_store",
]
