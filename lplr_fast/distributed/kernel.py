"""The empirical NTK computed by all ranks of a process group into a shared tile store.

Every rank plans the same tile stream (:func:`lplr_fast.ntk.engine.tile_source`), checks
with the others that model, data and options agree, and takes its share of the tiles
(:mod:`.schedule`). Tiles already finished in the store are read back and checked; the rest
are computed from the rank's own row and column blocks and written. Every tile passes the
rank's consumers (exact streaming-bound statistics, the probe check) once, so after one
gather the merged bounds are those of one process fed with all tiles. No rank holds more
than its tiles in flight.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..fingerprint import data_fingerprint, fingerprint_parts, model_fingerprint
from ..ntk.engine import VERIFY_OPTIONS, TileSource, tile_source
from ..ntk.probe import ProbeMismatchError, ProbeReport
from ..spectrum import SpectrumBounds, StreamingBounds
from .group import (
    DistributedError,
    agree,
    all_gather,
    barrier,
    broadcast,
    gather,
    rank_and_size,
)
from .probe import ShardedProbe
from .schedule import Tile, split
from .store import (
    Backend,
    StoredKernel,
    StoreError,
    TileStore,
    create_or_check,
    job_lock,
    prepare_folder,
)

STORE_VERSION_NOTE = "lplr_fast.distributed.empirical_ntk"


@dataclass
class DistributedNTK:
    """What :func:`empirical_ntk` returns on every rank.

    ``store``: the finished kernel (lazy reader); ``bounds``: the merged streaming bounds
    (certified, rounding included; None for x2 ≠ x1 or compute="diagonal");
    ``streaming``: the merged :class:`StreamingBounds` itself; ``probe``: the self-check
    report (None with verify="off"); ``computed`` / ``reused``: tiles computed in this run /
    read back from an earlier one (all ranks); ``my_tiles``: this rank's share."""

    store: StoredKernel
    bounds: SpectrumBounds | None
    streaming: StreamingBounds | None
    probe: ProbeReport | None
    computed: int
    reused: int
    my_tiles: list[Tile]
    seconds: float


def _config(src: TileSource, fingerprints: dict[str, str], options: dict[str, Any]) -> dict:
    job = src.job
    return {
        "n1": src.n1,
        "n2": src.n2,
        "k": src.k,
        "compute": job.compute,
        "block_size": src.block_size,
        "symmetric": job.symmetric,
        "dtype": str(job.out_dtype).removeprefix("torch."),
        "fingerprint": fingerprints,
        "options": options,
    }


def _plan(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    compute: str,
    block_size: int | None,
    dtype: torch.dtype | None,
    batchnorm: str,
    conv_route: str,
    group: Any,
) -> TileSource:
    """The tile stream, with one block size for all ranks (rank 0's default when not given:
    the default depends on the device's memory, which may differ between nodes)."""
    src = tile_source(
        model, x1, x2, compute=compute, block_size=block_size, dtype=dtype,  # type: ignore[arg-type]
        batchnorm=batchnorm, conv_route=conv_route,  # type: ignore[arg-type]
    )  # fmt: skip
    if block_size is None:
        chosen = broadcast(src.block_size, "agreeing on the block size", group)
        src = replace(src, block_size=chosen)
    return src


def prepare(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    compute: str,
    block_size: int | None,
    dtype: torch.dtype | None,
    batchnorm: str,
    conv_route: str,
    group: Any,
) -> tuple[TileSource, dict[str, Any]]:
    """Plan the stream and check that every rank has the same kernel to compute; returns
    the source and the kernel's identity (``config``, as stored in a manifest)."""
    src = _plan(model, x1, x2, compute, block_size, dtype, batchnorm, conv_route, group)
    job = src.job
    fingerprints = {
        "model": model_fingerprint(job.model),
        "data": data_fingerprint(job.x1, job.x2),
    }
    options = {"batchnorm": batchnorm, "conv_route": conv_route}
    config = _config(src, fingerprints, options)
    try:
        agree(config, "kernel (model, data and options)", group)
    except DistributedError:  # raised on every rank alike: name the model's differing part
        if _fingerprints_differ(fingerprints["model"], group):
            agree(fingerprint_parts(job.model), "model (parameters, buffers, attributes)", group)
        raise
    return src, config


def _fingerprints_differ(mine: str, group: Any) -> bool:
    """Whether the ranks' model fingerprints differ (the same answer on every rank)."""
    every = all_gather(mine, "comparing the ranks' model fingerprints", group)
    return len(set(every)) > 1


def _open_store(
    path: str | Path,
    backend: Backend | None,
    src: TileSource,
    config: dict[str, Any],
    group: Any,
    stack: Any,
) -> tuple[TileStore, set[Tile]]:
    """Rank 0 locks the store for this job, then (holding the lock, so that two jobs never
    both create it) creates or checks it, lists its finished tiles and recomputes one of
    them (:func:`check_reused`); everyone gets its verdict and the list (one view of the
    store for all ranks)."""
    rank, _ = rank_and_size(group)
    verdict: tuple[str, Any] = ("ok", None)
    if rank == 0:
        try:
            prepare_folder(path)
            stack.enter_context(job_lock(path))
            create_or_check(path, backend, config)
            reader = TileStore(path)
            done = reader.done(refresh=True)
            check_reused(src, reader, done)
            verdict = ("ok", sorted(done))
        except (StoreError, ValueError, OSError) as exc:
            verdict = ("error", str(exc))
        except Exception as exc:  # e.g. out of memory in the check: every rank must hear it
            verdict = ("failed", f"{type(exc).__name__}: {exc}")
    verdict = broadcast(verdict, "opening the tile store", group)
    if verdict[0] == "error":
        raise StoreError(verdict[1])
    if verdict[0] == "failed":
        raise DistributedError(f"rank 0 failed while opening the store {path}: {verdict[1]}")
    try:
        store: TileStore | None = TileStore(path)
        problem = None
    except (StoreError, OSError) as exc:  # e.g. not mounted on this node
        store, problem = None, f"{type(exc).__name__}: {exc}"
    problems = all_gather(problem, "checking that every rank sees the store", group)
    bad = [(r, m) for r, m in enumerate(problems) if m is not None]
    if bad:
        raise StoreError(
            f"rank {bad[0][0]} cannot open the store {path} ({bad[0][1]}); every rank must "
            "see the same store folder (a shared file system)"
        )
    assert store is not None
    return store, {tuple(t) for t in verdict[1]}  # type: ignore[misc]


REUSE_CHECK_ULPS = 1024  # a recomputed tile may differ from the stored one by rounding
# (another device or thread count); a different kernel differs by far more


def check_reused(src: TileSource, store: StoredKernel, done: Any) -> None:
    """Before finished tiles are adopted: recompute one of them (the first finished tile on
    the block diagonal, else the first finished one) and compare it with the stored bytes,
    bitwise or to rounding (≤ REUSE_CHECK_ULPS·eps·max|entry|). The fingerprint cannot see
    every kind of model state (globals, closures); this catches a store of another model
    that slipped through it. A damaged candidate is skipped (the read-back reports it)."""
    candidates = sorted(done, key=lambda t: (t[0] != t[1], t))[:3]
    for tile in candidates:
        try:
            stored = store.tile(tile)
        except StoreError:
            continue
        fresh = next(iter(src.tiles(only=[tile])))[2].detach().cpu().numpy()
        if fresh.shape == stored.shape and np.array_equal(fresh, stored, equal_nan=True):
            return
        if fresh.shape == stored.shape and np.isfinite(fresh).all() and np.isfinite(stored).all():
            scale = float(max(np.abs(fresh).max(initial=0), np.abs(stored).max(initial=0)))
            diff = float(np.abs(fresh - stored).max(initial=0))
            if diff <= REUSE_CHECK_ULPS * np.finfo(stored.dtype).eps * scale:
                return
            detail = f"differs from the stored one by up to {diff:.3g} (largest entry {scale:.3g})"
        else:
            detail = "does not match the stored one (shape or non-finite entries)"
        raise StoreError(
            f"the store {store.path} holds another model's kernel: tile {tile}, recomputed now, "
            f"{detail}, beyond rounding, although model, data and options have the same "
            "fingerprint (the model's forward depends on state the fingerprint does not "
            "cover, e.g. a global or a closure, or the store was written by other code). Use "
            "another --out / store folder, or delete this one to start over"
        )


def _stored_block_size(path: str | Path, group: Any) -> int | None:
    """The block size of an existing store (rank 0 reads it), so that a rerun without
    ``block_size`` continues the store whatever this machine's default."""
    found = None
    if rank_and_size(group)[0] == 0:
        try:
            found = StoredKernel(path).config["block_size"]
        except (StoreError, OSError, KeyError):
            found = None
    return broadcast(found, "reading the store's block size", group)


def _consumers(src: TileSource, bounds: bool, verify: str, group: Any) -> tuple[Any, Any]:
    if verify not in VERIFY_OPTIONS:
        raise ValueError(f"verify must be one of {VERIFY_OPTIONS}, got {verify!r}")
    job = src.job
    stream = None
    if bounds and job.symmetric and job.compute != "diagonal":
        stream = StreamingBounds(src.n1, record=True)
    probe = None
    if verify != "off":
        probe = ShardedProbe(
            job.model, job.x1, job.x2, compute=job.compute, k=src.k, bn_eval=job.bn_eval,
            guard=job.guard, block_size=src.block_size, per_sample=src.plan.per_sample,
            coverage="sampled" if verify == "sampled" else "all", group=group,
        )  # fmt: skip
    return stream, probe


def _feed(consumers: list[Any], rows: slice, cols: slice, tile: torch.Tensor) -> None:
    for consumer in consumers:
        if consumer is not None:
            consumer.update(rows, cols, tile)


def _read_back(
    store: TileStore, tiles: list[Tile], consumers: list[Any], on_corrupt: str, device: Any
) -> list[Tile]:
    """Feed this rank's share of the finished tiles, each checked against its digest;
    returns the corrupted ones to recompute (``on_corrupt="recompute"``)."""
    bad = []
    for tile in tiles:
        try:
            data = store.tile(tile)
        except StoreError:
            if on_corrupt != "recompute":
                raise
            store.forget(tile)
            bad.append(tile)
            continue
        rows, cols = store.grid.slices(tile)
        _feed(consumers, rows, cols, torch.from_numpy(data).to(device))
    return bad


def _compute(
    src: TileSource,
    store: TileStore,
    todo: list[Tile],
    consumers: list[Any],
    rank: int,
    bar: Any,
) -> None:
    b = src.block_size
    for rows, cols, tile, _ in src.tiles(only=todo):
        _feed(consumers, rows, cols, tile)
        store.write_tile((rows.start // b, cols.start // b), tile, rank)
        if bar is not None:
            bar.update(1)


def _merge_bounds(stream: StreamingBounds | None, group: Any) -> StreamingBounds | None:
    """Gather every rank's exact statistics on rank 0, merge, send the result to all."""
    if stream is None:
        return None
    parts = gather(stream.export(), "gathering the streaming-bound statistics", group)
    merged: tuple[str, Any] = ("ok", None)
    if parts is not None:
        try:
            merged = ("ok", StreamingBounds.merged(parts))
        except ValueError as exc:
            merged = ("error", str(exc))
    merged = broadcast(merged, "sharing the merged bounds", group)
    if merged[0] != "ok":
        raise DistributedError(f"merging the ranks' streaming bounds failed: {merged[1]}")
    return merged[1]


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    store: str | Path,
    compute: Literal["full", "trace", "diagonal"] = "full",
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    batchnorm: Literal["error", "eval"] = "error",
    conv_route: Literal["auto", "ghost", "materialize"] = "auto",
    backend: Backend | None = None,
    bounds: bool = True,
    verify: Literal["probe", "sampled", "off"] = "probe",
    on_corrupt: Literal["raise", "recompute"] = "raise",
    progress: bool = False,
    timeout: datetime.timedelta | None = None,
    group: Any = None,
) -> DistributedNTK:
    """Θ(x1, x2) of ``model`` computed by every rank of the process group into ``store``.

    Call it on every rank with the same arguments (checked: a rank with another model, data
    or option makes every rank raise :class:`DistributedError` before any work). Without a
    process group it runs in one process, with the same store. Each rank computes its share
    of the tiles (upper triangle only when x2 is None; :func:`.schedule.split`); tiles the
    store already holds (a rerun after a crash, a kill, or with another world size) are read
    back, checked against their sha256 and not recomputed.

    Args:
        model, x1, x2, compute, block_size, dtype, batchnorm, conv_route: as for
            :func:`lplr_fast.empirical_ntk` (x1, x2 whole on every rank; each rank reads only
            its blocks). ``block_size`` default: that of the existing store, else rank 0's
            default.
        store: a folder; created when missing, else it must hold this very kernel (same
            model, data, options and block size: a foreign store is refused).
        backend: "npy" (one .npy file) or "zarr" (chunk = tile) for a new store
            (:mod:`.store`); default: the existing store's, "npy" for a new one. Another
            backend than an existing store's is refused.
        bounds: merge the ranks' exact streaming statistics into certified bounds
            (x2 = None and compute "full" or "trace" only).
        verify: "probe" runs the random-probe check over all tiles and samples (sharded;
            raises :class:`lplr_fast.ProbeMismatchError` on every rank if the kernel is
            wrong); "sampled" and "off" as for :func:`lplr_fast.empirical_ntk`.
        on_corrupt: a finished tile whose bytes no longer match their sha256: "raise"
            (:class:`StoreError`) or "recompute" it.
        progress: a progress bar of rank 0's tiles on stderr.
        timeout: how long the ranks that finish first wait for the others (seconds or a
            timedelta; Gloo: a monitored barrier naming the missing ranks). Default: the
            process group's timeout (``init_process_group(timeout=...)``, 30 min unless set),
            which must exceed the slowest rank's share. A rank that dies is noticed at once.
        group: the process group (default: the global one).

    Returns:
        A :class:`DistributedNTK` (identical bounds and probe report on every rank).

    Raises:
        DistributedError: ranks disagree, or one died / hung (the others fail instead of
            hanging); StoreError: a foreign or damaged store; ProbeMismatchError.
    """
    started = time.perf_counter()
    if on_corrupt not in ("raise", "recompute"):
        raise ValueError(f"on_corrupt must be 'raise' or 'recompute', got {on_corrupt!r}")
    if verify not in VERIFY_OPTIONS:
        raise ValueError(f"verify must be one of {VERIFY_OPTIONS}, got {verify!r}")
    if isinstance(timeout, int | float):
        timeout = datetime.timedelta(seconds=timeout)
    rank, world = rank_and_size(group)
    arguments = {
        "store": str(store), "compute": compute, "block_size": block_size,
        "dtype": None if dtype is None else str(dtype), "batchnorm": batchnorm,
        "conv_route": conv_route, "backend": backend, "bounds": bounds, "verify": verify,
        "on_corrupt": on_corrupt,
        "timeout": None if timeout is None else timeout.total_seconds(),
    }  # fmt: skip
    # first of all: these decide which collectives each rank runs
    agree(arguments, "arguments of empirical_ntk", group)
    if block_size is None:
        block_size = _stored_block_size(store, group)
    src, config = prepare(
        model, x1, x2, compute=compute, block_size=block_size, dtype=dtype,
        batchnorm=batchnorm, conv_route=conv_route, group=group,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        tile_store, done = _open_store(store, backend, src, config, group, stack)
        grid = tile_store.grid
        stream, probe = _consumers(src, bounds, verify, group)
        consumers = [stream, probe]
        # finished tiles (read back, checked) and missing ones (computed) are split
        # separately, so a rerun balances the work that is left
        to_read = split(grid, world, sorted(done))[rank]
        to_compute = split(grid, world, [t for t in grid.tiles() if t not in done])[rank]
        failure = None
        try:
            bad = _read_back(tile_store, to_read, consumers, on_corrupt, src.job.x1.device)
            to_compute = sorted(to_compute + bad)
            bar = _progress_bar(progress and rank == 0, len(to_compute), world)
            try:
                _compute(src, tile_store, to_compute, consumers, rank, bar)
            finally:
                if bar is not None:
                    bar.close()
        except Exception as exc:  # shared below: every rank fails, none waits
            failure = exc
        _fail_together(failure, group, timeout)
        counts = all_gather((len(to_compute), len(to_read) - len(bad)), "counting tiles", group)
        merged = _merge_bounds(stream, group)
        report = _finish_probe(probe, sum(r for _, r in counts), len(grid.tiles()), store)
        tile_store.done(refresh=True)
        result = DistributedNTK(
            tile_store, None if merged is None else merged.bounds(), merged, report,
            sum(c for c, _ in counts), sum(r for _, r in counts), sorted(to_read + to_compute),
            time.perf_counter() - started,
        )  # fmt: skip
        if rank == 0:
            tile_store.write_summary(summary_dict(result, world))
        barrier("waiting for the summary", group, timeout)
    return result


def _fail_together(failure: Exception | None, group: Any, timeout: Any) -> None:
    """Meet the other ranks (a monitored barrier with ``timeout``, else the process group's
    own timeout), then fail on every rank if any rank failed: the failing rank re-raises
    its error, the others raise a DistributedError naming it."""
    barrier("waiting for the other ranks to finish their tiles", group, timeout)
    messages = all_gather(
        None if failure is None else f"{type(failure).__name__}: {failure}",
        "sharing the ranks' outcomes", group,
    )  # fmt: skip
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failure is not None:
        raise failure
    if failed:
        rank, message = failed[0]
        raise DistributedError(
            f"rank {rank} failed during its share of the tiles (reading back finished ones "
            f"or computing new ones: {message}); the finished tiles "
            "are kept in the store: fix the cause and rerun"
        )


def _finish_probe(
    probe: ShardedProbe | None,
    reused: int = 0,
    total: int = 0,
    store: str | Path | None = None,
) -> ProbeReport | None:
    """The probe's verdict; a failure names the tiles reused from ``store`` (if any)."""
    if probe is None:
        return None
    try:
        return probe.finish()
    except ProbeMismatchError as exc:
        if store is None:
            raise
        if reused:
            raise ProbeMismatchError(
                f"the kernel fails the probe check, and {reused} of its {total} tiles were "
                f"reused from the store {store} (written by an earlier run): the store may "
                "hold another model's kernel (one whose forward reads state the fingerprint "
                "does not cover). Compute into a new store folder (or delete this one) and "
                f"rerun; only if that fails too is it the engine. Details: {exc}"
            ) from None
        raise ProbeMismatchError(
            f"{exc} (No tile was reused: all {total} were computed in this run. The tiles are "
            "in the store; delete it before recomputing with another implementation.)"
        ) from None


def summary_dict(result: DistributedNTK, world: int) -> dict[str, Any]:
    """What summary.json records about a complete run."""
    out: dict[str, Any] = {
        "world_size": world,
        "tiles_computed": result.computed,
        "tiles_reused": result.reused,
        "seconds": result.seconds,
        "bounds": None if result.bounds is None else result.bounds.to_dict(),
    }
    if result.streaming is not None:
        s = result.streaming
        out["trace_bounds"] = list(s.trace_bounds())
        out["frobenius_bounds"] = list(s.frobenius_bounds())
        out["gershgorin"] = list(s.gershgorin())
    if result.probe is not None:
        p = result.probe
        out["probe"] = {
            "kernel_value": p.kernel_value, "autograd_value": p.autograd_value,
            "tolerance": p.tolerance, "passed": p.passed,
        }  # fmt: skip
    return out


def _progress_bar(show: bool, total: int, world: int) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    desc = "tiles (rank 0)" if world > 1 else "tiles"
    return tqdm(total=total, unit="tile", desc=desc)


__all__ = ["DistributedNTK", "empirical_ntk", "prepare"]
