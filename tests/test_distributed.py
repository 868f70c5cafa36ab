"""lplr_fast.distributed on 2 and 3 local Gloo processes: kernels bitwise equal to one
process, merged bounds exactly equal, Lanczos against dense eigenvalues, a rank killed
mid-run (the others fail clearly, a rerun with another world size finishes from the saved
tiles), ranks with different data refused; stores: corrupted or foreign ones refused."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lplr_fast
from lplr_fast import distributed as D
from lplr_fast.spectrum import as_matrix
from tests.dist_launch import launch
from tests.dist_worker import KERNEL_CASES, model_and_data


def same_bounds(a, b) -> bool:
    """SpectrumBounds equal field by field (NaN equal to NaN; wall time ignored)."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("seconds"), db.pop("seconds")
    return all(
        (isinstance(v, float) and math.isnan(v) and math.isnan(db[k])) or v == db[k]
        for k, v in da.items()
    )


def results(out: Path, world: int, outcomes) -> list[dict]:
    for rank, o in enumerate(outcomes):
        assert o.returncode == 0, f"rank {rank} failed ({o.returncode}):\n{o.stderr[-4000:]}"
    return [torch.load(out / f"result{r}.pt", weights_only=False) for r in range(world)]


def reference(name: str, n: int, block: int, compute: str, cross: bool):
    model, x, x2 = model_and_data(n)
    if cross or compute == "diagonal":
        return lplr_fast.empirical_ntk(model, x, x2 if cross else None, compute=compute,
                                       block_size=block), None  # fmt: skip
    kernel, stream = lplr_fast.empirical_ntk(
        model, x, compute=compute, block_size=block, bounds=True
    )
    return kernel, stream


@pytest.mark.parametrize(("world", "backend"), [(3, "npy"), (2, "zarr")])
def test_kernels_equal_one_process(tmp_path, world, backend):
    if backend == "zarr":
        pytest.importorskip("zarr")
    found = results(tmp_path, world, launch("kernels", world, tmp_path, backend))
    for name, n, block, compute, cross in KERNEL_CASES:
        kernel, stream = reference(name, n, block, compute, cross)
        grid = D.TileGrid(n, n if not cross else 7, block, not cross)
        shares = [found[r][name]["mine"] for r in range(world)]
        assert sorted(t for s in shares for t in s) == grid.tiles()  # each tile once
        for rank in range(world):
            got = found[rank][name]
            assert torch.equal(got["kernel"], kernel), (name, rank)  # bitwise
            assert got["probe_passed"]
            assert got["computed"] == len(grid.tiles()) and got["reused"] == 0
            if stream is None:
                assert got["bounds"] is None
            else:  # merged exact statistics: the same numbers as one stream
                assert same_bounds(got["bounds"], stream.bounds()), name
                assert got["trace_bounds"] == stream.trace_bounds()
                assert got["gershgorin"] == stream.gershgorin()


def test_operators_and_lanczos(tmp_path):
    found = results(tmp_path, 3, launch("operators", 3, tmp_path))
    model, x, _ = model_and_data(13)
    dense = as_matrix(lplr_fast.empirical_ntk(model, x))
    evals = torch.linalg.eigvalsh(dense)
    v = torch.arange(dense.shape[0], dtype=torch.float64) / 7.0
    for got in found:
        lz = got["lanczos"]
        assert not lz.certified_min and not lz.certified_max  # estimates, labelled so
        assert lz.lambda_max_lower == pytest.approx(float(evals[-1]), rel=1e-9)
        assert lz.lambda_min_upper == pytest.approx(float(evals[0]), rel=1e-6)
        assert torch.allclose(got["product"], dense @ v, rtol=1e-12, atol=1e-12)
        assert torch.allclose(got["store_product"], dense @ v, rtol=1e-12, atol=1e-12)
        sb = got["store"]
        assert sb.dense.certified_min and sb.streaming.certified_min
        assert sb.dense.lambda_min_lower <= evals[0] <= sb.dense.lambda_min_upper
        assert sb.dense.lambda_max_lower <= evals[-1] <= sb.dense.lambda_max_upper
        assert sb.streaming.lambda_min_lower <= evals[0]
        assert sb.streaming.lambda_max_upper >= evals[-1]
        assert got["lanczos"].lambda_max_lower == found[0]["lanczos"].lambda_max_lower


def test_killed_rank_then_rerun_with_another_world_size(tmp_path):
    outcomes = launch("killed", 3, tmp_path, "1", deadline=180)
    assert outcomes[1].returncode == -9  # the victim
    for rank in (0, 2):  # the others stop with a clear error, not a hang
        assert outcomes[rank].returncode == 0, outcomes[rank].stderr[-3000:]
        error = torch.load(tmp_path / f"result{rank}.pt", weights_only=False)["error"]
        assert error is not None and "died" in error and "rerun" in error
    store = D.open_store(tmp_path / "store-kill")
    finished = len(store.done())
    assert 0 < finished < len(store.grid.tiles())
    again = results(tmp_path, 2, launch("resume", 2, tmp_path))
    model, x, _ = model_and_data(23)
    kernel, stream = lplr_fast.empirical_ntk(model, x, block_size=4, bounds=True)
    for got in again:
        assert got["reused"] == finished
        assert got["computed"] == len(store.grid.tiles()) - finished
        assert torch.equal(got["kernel"], kernel)
        assert same_bounds(got["bounds"], stream.bounds())


@pytest.mark.parametrize(
    ("kill", "backend"),
    [("create:0", "npy"), ("tile2:2", "npy"), ("tile2:1", "zarr"), ("merge:1", "npy"),
     ("summary:0", "npy")],
)  # fmt: skip
def test_kill_at_each_phase_then_rerun(tmp_path, monkeypatch, kill, backend):
    """SIGKILL one rank while the store is created, while tiles are written, while the
    bounds are merged, or while the summary is written: the others end (no hang) with a
    clear error, and a rerun on 2 ranks gives the one-process kernel and bounds."""
    if backend == "zarr":
        pytest.importorskip("zarr")
    monkeypatch.setenv("LPLR_TEST_BACKEND", backend)
    phase, victim = kill.split(":")
    outcomes = launch("resume", 3, tmp_path, kill, deadline=180)
    assert outcomes[int(victim)].returncode == -9
    for rank, o in enumerate(outcomes):
        assert o.returncode is not None, f"rank {rank} hung"
        if rank != int(victim):
            assert o.returncode != 0 and "DistributedError" in o.stderr, o.stderr[-3000:]
            assert "rerun" in o.stderr
    again = results(tmp_path, 2, launch("resume", 2, tmp_path))
    model, x, _ = model_and_data(23)
    kernel, stream = lplr_fast.empirical_ntk(model, x, block_size=4, bounds=True)
    for got in again:
        assert torch.equal(got["kernel"], kernel)
        assert same_bounds(got["bounds"], stream.bounds())
    if phase in ("merge", "summary"):  # every tile was finished before the kill
        assert again[0]["computed"] == 0


def test_ranks_with_different_data_are_refused(tmp_path):
    found = results(tmp_path, 2, launch("mismatch", 2, tmp_path))
    for got in found:
        assert got["error"] is not None and "disagree" in got["error"]
        named = got["attribute_error"]
        assert named is not None and "tag" in named and "device-1" in named, named
    assert not (tmp_path / "store-mismatch").exists()  # refused before any work


def test_arguments_that_decide_collectives_must_agree(tmp_path):
    found = results(tmp_path, 2, launch("arguments", 2, tmp_path, deadline=100))
    expected = {
        "block_size": "rank 0 4, rank 1 None",
        "timeout": "rank 0 None, rank 1 5.0",
        "dense_limit": "rank 0 None, rank 1 0",
        "rtol": "rank 0 1e-06, rank 1 0.01",
        "max_iter": "rank 0 300, rank 1 3",
        "seed": "rank 0 0, rank 1 1",
    }
    for got in found:
        for name, values in expected.items():
            assert got[name] is not None and "disagree" in got[name], name
            assert f"{name}: {values}" in got[name], got[name]
        assert got["dense"] is not None  # rank 0's default dense limit, on every rank
    assert same_bounds(found[0]["dense"], found[1]["dense"])


def test_a_failing_rank_fails_every_rank(tmp_path):
    found = results(tmp_path, 3, launch("failing", 3, tmp_path))
    assert found[1]["error"].startswith("OSError") and "No space" in found[1]["error"]
    for rank in (0, 2):
        assert found[rank]["error"].startswith("DistributedError: rank 1 failed")
        assert "No space left" in found[rank]["error"]
    store = D.open_store(tmp_path / "store-fail")
    assert 0 < len(store.done()) < len(store.grid.tiles())  # the others' tiles are kept


# -- stores, one process ------------------------------------------------------------------
def test_second_job_on_a_store_is_refused(tmp_path):
    from lplr_fast.distributed.store import job_lock

    model, x = small()
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)
    with job_lock(tmp_path / "s"), pytest.raises(D.StoreError, match="another job"):
        D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)


def small():
    model, x, _ = model_and_data(9)
    return model, x


@pytest.mark.parametrize("backend", ["npy", "zarr"])
def test_store_is_lazily_readable_by_plain_tools(tmp_path, backend):
    if backend == "zarr":
        pytest.importorskip("zarr")
    model, x = small()
    res = D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, backend=backend)
    kernel = lplr_fast.empirical_ntk(model, x, block_size=4)
    if backend == "npy":
        raw = np.load(tmp_path / "s" / "kernel.npy", mmap_mode="r")
    else:
        import zarr

        raw = zarr.open_array(str(tmp_path / "s" / "kernel.zarr"), mode="r")
    upper = np.asarray(raw[0:4, 4:8])  # a stored (upper) tile, read directly
    assert np.array_equal(upper, kernel[0:4, 4:8].numpy())
    assert torch.equal(res.store.to_dense(), kernel)
    block = res.store.block(slice(2, 7), slice(1, 9))  # crosses tiles, mirrored below
    assert np.array_equal(block, kernel[2:7, 1:9].numpy())
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["probe"]["passed"] and summary["tiles_computed"] == 6


def test_corrupted_tile_is_refused_or_recomputed(tmp_path):
    model, x = small()
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)
    path = tmp_path / "s" / "kernel.npy"
    raw = np.load(path, mmap_mode="r+")
    raw[5, 6, 0, 0] += 1e-12  # one bit-level change inside tile (1, 1)
    raw.flush()
    del raw
    with pytest.raises(D.StoreError, match=r"tile \(1, 1\).*corrupted"):
        D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)
    res = D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, on_corrupt="recompute")
    assert res.computed == 1 and res.reused == 5
    assert torch.equal(res.store.to_dense(), lplr_fast.empirical_ntk(model, x, block_size=4))


def test_foreign_and_damaged_stores_are_refused(tmp_path):
    model, x = small()
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)
    other = copy.deepcopy(model)  # same structure...
    with torch.no_grad():
        other[0].weight[0, 0] += 1.0  # ...another parameter value
    with pytest.raises(D.StoreError, match=r"different kernel.*fingerprint"):
        D.empirical_ntk(other, x, store=tmp_path / "s", block_size=4)
    with pytest.raises(D.StoreError, match=r"different kernel.*block_size"):
        D.empirical_ntk(model, x, store=tmp_path / "s", block_size=3)
    with pytest.raises(D.StoreError, match="different kernel"):
        D.empirical_ntk(model, x + 1, store=tmp_path / "s", block_size=4)
    (tmp_path / "s" / "tiles" / "0-1.json").write_text("{not json")
    with pytest.raises(D.StoreError, match="not a valid tile marker"):
        D.open_store(tmp_path / "s").done()
    (tmp_path / "s" / "manifest.json").write_text("[]")
    with pytest.raises(D.StoreError, match="not an lplr-fast kernel store"):
        D.open_store(tmp_path / "s")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(D.StoreError, match="not a kernel store"):
        D.empirical_ntk(model, x, store=tmp_path / "t", block_size=4)


def test_truncated_npy_is_refused(tmp_path):
    model, x = small()
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)
    path = tmp_path / "s" / "kernel.npy"
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 8)
    with pytest.raises(D.StoreError, match="truncated"):
        D.open_store(tmp_path / "s")


# -- schedule and merging, one process ---------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("n", "block", "world"), [(11, 4, 3), (100, 7, 4), (5, 8, 3), (64, 4, 9)])
def test_split_is_a_balanced_partition(n, block, world, symmetric):
    grid = D.TileGrid(n, n, block, symmetric)
    parts = D.split(grid, world)
    assert len(parts) == world and D.split(grid, world) == parts  # deterministic
    flat = [t for p in parts for t in p]
    assert flat == grid.tiles()  # contiguous runs in row-major order, each tile once
    costs = [sum(grid.cost(t) for t in p) for p in parts]
    ideal = sum(costs) / world
    assert max(costs) <= ideal + max(grid.cost(t) for t in grid.tiles())


def test_merged_streams_equal_one_stream_and_refuse_overlap():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(14, 40, generator=gen, dtype=torch.float64)
    k = a @ a.T
    k[0] *= 2.0**300  # a row far out of range: scaled tiles too
    k[:, 0] *= 2.0**300
    grid = D.TileGrid(14, 14, 4, True)
    one = lplr_fast.StreamingBounds(14, psd=False)
    parts = [lplr_fast.StreamingBounds(14, psd=False, record=True) for _ in range(3)]
    for i, tile in enumerate(grid.tiles()):
        r, c = grid.slices(tile)
        one.update(r, c, k[r, c])
        parts[(i * 7) % 3].update(r, c, k[r, c])  # any assignment, any order per part
    merged = lplr_fast.StreamingBounds.merged([p.export() for p in parts])
    assert same_bounds(merged.bounds(), one.bounds())
    assert merged.frobenius_bounds() == one.frobenius_bounds()
    r, c = grid.slices(grid.tiles()[0])
    dup = lplr_fast.StreamingBounds(14, psd=False, record=True)
    dup.update(r, c, k[r, c])
    with pytest.raises(ValueError, match="overlaps"):
        lplr_fast.StreamingBounds.merged([p.export() for p in parts] + [dup.export()])
    partial = lplr_fast.StreamingBounds.merged([parts[0].export()])
    with pytest.raises(ValueError, match="feed every tile"):
        partial.bounds()


def test_benchmark_group_smoke():
    """The "distributed" benchmark group on tiny cases: its paths agree (no timing claims)."""
    from benchmarks.distributed_cases import group_distributed

    rows: list[dict] = []
    group_distributed(torch.device("cpu"), rows, True, 0.0, smoke=True)
    assert len(rows) == 5 and all(r["median_s"] > 0 for r in rows)


@pytest.mark.parametrize("compute", ["full", "trace", "diagonal"])
def test_sharded_probe_covers_every_sample_and_takes_the_verify_options(tmp_path, compute):
    """One process: a kernel wrong only on samples the routing check does not see is caught
    in every mode (review 11, item 2); "sampled" / "off" accepted, anything else refused."""
    from tests.test_ntk_regressions import outlier_inputs
    from tests.zoo import OutlierHead

    torch.manual_seed(0)
    model = OutlierHead().double()
    x = outlier_inputs(20, [11, 17], seed=4)
    with pytest.raises(lplr_fast.ProbeMismatchError):
        D.empirical_ntk(model, x, store=tmp_path / "a", compute=compute, block_size=8)
    res = D.empirical_ntk(model, x, store=tmp_path / "b", compute=compute, verify="off")
    assert res.probe is None
    model, x = small()
    res = D.empirical_ntk(model, x, store=tmp_path / "c", compute=compute, verify="sampled")
    assert res.probe.passed
    assert res.probe.samples == (9 if compute == "full" else 4)
    with pytest.raises(ValueError, match="verify must be"):
        D.empirical_ntk(model, x, store=tmp_path / "d", compute=compute, verify="Probe")
