"""The tile stream is the spine: one producer (ntk_blocks), every other output a consumer;
no host synchronisation inside the tile loop; the same bits on every run."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import lplr_fast
from lplr_fast import empirical_ntk, ntk_blocks
from lplr_fast.ntk import engine, transpose_tile

from .models import SmallCNN, mlp, seeded

NTK_PACKAGE = pathlib.Path(lplr_fast.__file__).parent / "ntk"


def test_ntk_package_does_not_import_spectrum():
    for path in NTK_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "spectrum" not in (node.module or ""), path.name
            elif isinstance(node, ast.Import):
                assert all("spectrum" not in a.name for a in node.names), path.name


class Recorder:
    """A minimal consumer: records what it is fed and the layout it was promised."""

    per_layer = True

    def __init__(self) -> None:
        self.layout: dict | None = None
        self.tiles: list[tuple[slice, slice, str | None, torch.Tensor]] = []

    def expect(self, **layout) -> None:
        self.layout = layout

    def update(self, rows, cols, tile, layer=None) -> None:
        self.tiles.append((rows, cols, layer, tile.clone()))


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("compute", ["full", "trace", "diagonal"])
def test_generic_consumer_sees_every_tile_once(cross, compute, rng):
    model = seeded(mlp)
    x1 = torch.randn(9, 6, generator=rng, dtype=torch.float64)
    x2 = torch.randn(7, 6, generator=rng, dtype=torch.float64) if cross else None
    rec = Recorder()
    kernel = empirical_ntk(model, x1, x2, compute=compute, block_size=4, bounds=rec)
    n2 = 7 if cross else 9
    assert rec.layout == {"n1": 9, "n2": n2, "compute": compute, "symmetric": not cross}
    covered = torch.zeros(9, n2, dtype=torch.int64)
    layer_sum: dict[tuple[int, int], torch.Tensor] = {}
    for rows, cols, layer, tile in rec.tiles:
        if layer is None:
            covered[rows, cols] += 1
            assert torch.equal(tile, kernel[rows, cols])
            if not cross and rows != cols:
                assert torch.equal(transpose_tile(tile, compute), kernel[cols, rows])
                covered[cols, rows] += 1
        else:
            key = (rows.start, cols.start)
            layer_sum[key] = layer_sum.get(key, 0) + tile
    assert torch.equal(covered, torch.ones_like(covered))
    for rows, cols, layer, tile in rec.tiles:
        if layer is None:
            torch.testing.assert_close(layer_sum[(rows.start, cols.start)], tile)


def test_empirical_ntk_consumes_the_one_producer(monkeypatch, rng):
    calls = []
    real = engine._tiles

    def spy(*args, **kwargs):
        calls.append(1)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(engine, "_tiles", spy)
    model = seeded(mlp)
    x = torch.randn(5, 6, generator=rng, dtype=torch.float64)
    empirical_ntk(model, x)
    list(ntk_blocks(model, x))
    assert len(calls) == 2


def test_consumer_without_update_is_refused(rng):
    with pytest.raises(TypeError, match="update"):
        empirical_ntk(seeded(mlp), torch.randn(3, 6, dtype=torch.float64), bounds=object())


def test_ntk_blocks_checks_options_eagerly():
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="block_size"):
        ntk_blocks(seeded(mlp), x, block_size=0)
    with pytest.raises(ValueError, match="symmetric kernel"):
        ntk_blocks(seeded(mlp), x, x, bounds=lplr_fast.StreamingBounds(3))


def _forbid_host_sync(monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("host synchronisation inside the tile loop")

    for name in ("item", "tolist", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("verify", ["off", "probe"])
@pytest.mark.parametrize("compute", ["full", "trace"])
def test_tile_loop_has_no_host_sync(compute, verify, monkeypatch, rng):
    """Syncs are allowed once up front (routing check) and once at the end (probe check),
    never between the first and the last tile."""
    model = seeded(SmallCNN)
    x = torch.randn(7, 2, 7, 7, generator=rng, dtype=torch.float64)
    ref = empirical_ntk(model, x, compute=compute, block_size=3)
    real_plan, real_finish = engine._plan, engine._DeferredProbe.finish
    patch = pytest.MonkeyPatch()

    def plan_then_forbid(job):
        result = real_plan(job)
        _forbid_host_sync(patch)
        return result

    def allow_then_finish(self):
        patch.undo()
        return real_finish(self)

    monkeypatch.setattr(engine, "_plan", plan_then_forbid)
    monkeypatch.setattr(engine._DeferredProbe, "finish", allow_then_finish)
    try:
        tiles = list(ntk_blocks(model, x, compute=compute, block_size=3, verify=verify))
    finally:
        patch.undo()
    assert len(tiles) == 6
    for (r, c), tile in tiles:
        assert torch.equal(tile, ref[r, c])


@pytest.mark.cuda
def test_tile_loop_has_no_host_sync_cuda():
    torch.manual_seed(0)
    model = mlp().double().cuda()
    x = torch.randn(9, 6, dtype=torch.float64, device="cuda")
    stream = ntk_blocks(model, x, block_size=4, verify="off")
    first = next(stream)  # the routing check syncs once, up front
    torch.cuda.set_sync_debug_mode("error")
    try:
        tiles = [first, *stream]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(tiles) == 6


@pytest.mark.parametrize("compute", ["full", "trace", "diagonal"])
def test_repeated_runs_are_bitwise_equal(compute, rng):
    model = seeded(SmallCNN)
    x1 = torch.randn(8, 2, 7, 7, generator=rng, dtype=torch.float64)
    x2 = torch.randn(5, 2, 7, 7, generator=rng, dtype=torch.float64)
    for args in ((x1,), (x1, x2)):
        first = empirical_ntk(model, *args, compute=compute)
        assert torch.equal(first, empirical_ntk(model, *args, compute=compute))


def test_default_block_size_ignores_free_memory(monkeypatch, rng):
    model = seeded(mlp)
    x = torch.randn(6, 6, generator=rng, dtype=torch.float64)
    job = engine._prepare(model, x, None, "full", "structured", None, "error")
    size = engine._choose_block_size(job, 1000, 3, 0)
    monkeypatch.setattr(engine, "available_memory_bytes", lambda device: 1)
    assert engine._choose_block_size(job, 1000, 3, 0) == size
