"""Store identity and robustness (review of issue 15): the fingerprint sees the Python state
a forward reads, a reused store is checked numerically, leftovers of killed atomic writes do
not block a rerun, two jobs cannot both create one store, StoredKernel.block slices like
numpy, and a probe failure on reused tiles says so."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

import lplr_fast
from lplr_fast import distributed as D
from lplr_fast.fingerprint import model_fingerprint
from lplr_fast.models import MLP
from tests.dist_launch import ROOT
from tests.dist_worker import model_and_data

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def ntk_mlp(w_std: float) -> nn.Module:
    torch.manual_seed(0)
    return MLP(4, [16, 16], 2, activation="relu", parameterization="ntk", w_std=w_std).double()


def data(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


# -- 1. identity ----------------------------------------------------------------------------
def test_fingerprint_sees_python_attributes_the_forward_reads():
    assert model_fingerprint(ntk_mlp(1.0)) != model_fingerprint(ntk_mlp(2.0))
    assert model_fingerprint(ntk_mlp(1.0)) == model_fingerprint(ntk_mlp(1.0))
    a, b = ntk_mlp(1.0), ntk_mlp(1.0)
    b.act_name = "tanh"  # any plain attribute counts
    assert model_fingerprint(a) != model_fingerprint(b)


def test_fingerprint_sees_functions_kept_as_attributes():
    import functools

    def with_act(act) -> nn.Module:
        m = ntk_mlp(1.0)
        m.extra = act
        return m

    def scaled(c):
        return lambda h: h * c

    assert model_fingerprint(with_act(torch.tanh)) != model_fingerprint(with_act(torch.sigmoid))
    assert model_fingerprint(with_act(scaled(1.0))) != model_fingerprint(with_act(scaled(2.0)))
    assert model_fingerprint(with_act(scaled(1.0))) == model_fingerprint(with_act(scaled(1.0)))
    clamp = functools.partial
    assert model_fingerprint(with_act(clamp(torch.clamp, min=0.0))) != model_fingerprint(
        with_act(clamp(torch.clamp, min=1.0))
    )


def test_fingerprint_is_the_same_in_a_fresh_process():
    code = textwrap.dedent("""
        import torch
        from lplr_fast.models import MLP
        from lplr_fast.fingerprint import model_fingerprint
        torch.manual_seed(0)
        m = MLP(4, [16, 16], 2, activation="relu", parameterization="ntk", w_std=2.0).double()
        print(model_fingerprint(m))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == model_fingerprint(ntk_mlp(2.0))


def test_store_of_an_mlp_with_other_scales_is_refused(tmp_path):
    x = data()
    first = D.empirical_ntk(ntk_mlp(1.0), x, store=tmp_path / "s", block_size=4, verify="off")
    assert first.computed == 6
    with pytest.raises(D.StoreError, match="different kernel"):
        D.empirical_ntk(ntk_mlp(2.0), x, store=tmp_path / "s", block_size=4, verify="off")
    again = D.empirical_ntk(ntk_mlp(1.0), x, store=tmp_path / "s", block_size=4)
    assert again.reused == 6 and again.computed == 0
    assert torch.equal(
        again.store.to_dense(), lplr_fast.empirical_ntk(ntk_mlp(1.0), x, block_size=4)
    )


SCALE = {"s": 1.0}  # state no fingerprint can see: a global read by forward


class GlobalScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * SCALE["s"]


@pytest.mark.parametrize("verify", ["off", "probe"])
def test_reused_store_is_checked_numerically(tmp_path, monkeypatch, verify):
    x = data()
    D.empirical_ntk(GlobalScaled(), x, store=tmp_path / "s", block_size=4)
    monkeypatch.setitem(SCALE, "s", 2.0)
    with pytest.raises(D.StoreError, match="holds another model's kernel: tile \\(0, 0\\)"):
        D.empirical_ntk(GlobalScaled(), x, store=tmp_path / "s", block_size=4, verify=verify)
    monkeypatch.setitem(SCALE, "s", 1.0)  # the right model adopts the store
    res = D.empirical_ntk(GlobalScaled(), x, store=tmp_path / "s", block_size=4)
    assert res.reused == 6


def test_probe_failure_on_reused_tiles_names_the_store(tmp_path, monkeypatch):
    x = data()
    D.empirical_ntk(GlobalScaled(), x, store=tmp_path / "s", block_size=4, verify="off")
    monkeypatch.setitem(SCALE, "s", 2.0)
    monkeypatch.setattr(D.kernel, "check_reused", lambda *a: None)  # a miss of the check
    with pytest.raises(lplr_fast.ProbeMismatchError, match="6 of its 6 tiles were reused"):
        D.empirical_ntk(GlobalScaled(), x, store=tmp_path / "s", block_size=4)


def test_reuse_check_tolerates_rounding_only(tmp_path):
    model, x = model_and_data(9)[:2]
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, verify="off")
    store = D.store.TileStore(tmp_path / "s")
    tile = store.tile((0, 0))
    eps = np.finfo(tile.dtype).eps
    scale = np.abs(tile).max()
    rounded = tile + 8 * eps * scale  # what another device's rounding might do
    store.write_tile((0, 0), torch.from_numpy(rounded))
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, verify="off")
    store.write_tile((0, 0), torch.from_numpy(tile * (1 + 1e-9)))
    with pytest.raises(D.StoreError, match="another model's kernel"):
        D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, verify="off")


# -- 2. leftovers of killed atomic writes -------------------------------------------------------
KILL_AT_RENAME = """
import os, signal, sys, torch
import lplr_fast.training.io as tio
from lplr_fast import distributed as D
from tests.dist_worker import model_and_data
target = sys.argv[2]
real = os.replace
def replace(a, b):  # SIGKILL with the temporary file written, before the rename
    if os.path.basename(str(b)) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b)
tio.os.replace = replace
model, x, _ = model_and_data(9)
D.empirical_ntk(model, x, store=sys.argv[1], block_size=4)
"""


@pytest.mark.parametrize("target", ["manifest.json", "0-1.json", "summary.json"])
def test_kill_inside_an_atomic_write_then_rerun(tmp_path, target):
    store = tmp_path / "s"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, str(store), target], env=ENV, cwd=ROOT,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    leftovers = [p for p in store.rglob(".*.json.*")]
    assert leftovers, sorted(store.rglob("*"))
    model, x = model_and_data(9)[:2]
    res = D.empirical_ntk(model, x, store=store, block_size=4)
    assert torch.equal(res.store.to_dense(), lplr_fast.empirical_ntk(model, x, block_size=4))
    assert res.computed + res.reused == 6
    assert not [p for p in store.rglob(".*.json.*")]  # cleaned up


def test_foreign_folder_still_refused_and_left_alone(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    model, x = model_and_data(9)[:2]
    with pytest.raises(D.StoreError, match="not a kernel store"):
        D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["notes.txt"]


# -- 3. two jobs creating one store ---------------------------------------------------------------
SLOW_CREATOR = """
import os, sys, time, torch
import lplr_fast, lplr_fast.distributed.store as dstore
from lplr_fast import distributed as D
from tests.dist_worker import model_and_data
real = dstore.atomic_write_json
def slow(path, obj):  # widen the window between "no manifest" and the manifest
    if os.path.basename(str(path)) == "manifest.json":
        time.sleep(float(sys.argv[2]))
    return real(path, obj)
dstore.atomic_write_json = slow
model, x, _ = model_and_data(9, seed=1)
res = D.empirical_ntk(model, x, store=sys.argv[1], block_size=4, verify="off")
print("correct", torch.equal(res.store.to_dense(), lplr_fast.empirical_ntk(model, x, block_size=4)))
"""


def test_second_job_cannot_create_the_store_while_the_first_does(tmp_path):
    store = tmp_path / "s"
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_CREATOR, str(store), "10"], env=ENV, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 200
        while not (store / "kernel.npy").exists():  # the first job is inside its creation
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        model, x = model_and_data(9, seed=2)[:2]  # another kernel, same shapes
        with pytest.raises(D.StoreError, match="another job"):
            D.empirical_ntk(model, x, store=store, block_size=4, verify="off")
        out, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert "correct True" in out


# -- 5. block slices ----------------------------------------------------------------------------
def test_block_slices_like_numpy(tmp_path):
    model, x = model_and_data(13)[:2]
    res = D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, verify="off")
    dense = res.store.to_dense().numpy()
    rng = np.random.default_rng(0)
    ends = [None, -20, -13, -5, -1, 0, 1, 4, 5, 12, 13, 20]
    steps = [None, 1, 2, 3, -1, -2, 5]
    for _ in range(150):
        rows = slice(rng.choice(ends), rng.choice(ends), rng.choice(steps))
        cols = slice(rng.choice(ends), rng.choice(ends), rng.choice(steps))
        got = res.store.block(rows, cols)
        assert got.shape == dense[rows, cols].shape, (rows, cols)
        assert np.array_equal(got, dense[rows, cols]), (rows, cols)
    with pytest.raises(ValueError, match="step cannot be zero"):
        res.store.block(slice(0, 4, 0), slice(0, 2))
    with pytest.raises(TypeError, match="must be a slice"):
        res.store.block(3, slice(0, 2))


# -- minor ------------------------------------------------------------------------------------
def test_backend_of_an_existing_store_is_kept_or_refused(tmp_path):
    pytest.importorskip("zarr")
    model, x = model_and_data(9)[:2]
    D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4)  # npy by default
    with pytest.raises(D.StoreError, match="is a 'npy' store, not 'zarr'"):
        D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, backend="zarr")
    assert D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4).reused == 6


def test_lanczos_lambda_min_estimate_is_never_an_empty_interval(tmp_path, monkeypatch):
    from lplr_fast.spectrum.lanczos import LanczosResult

    model, x = model_and_data(9)[:2]
    res = D.empirical_ntk(model, x, store=tmp_path / "s", block_size=4, verify="off")
    fake = LanczosResult(-2.77e-12, 5.0, 0.0, 0.0, None, None, 3)
    monkeypatch.setattr(D.operator, "lanczos", lambda *a, **k: fake)
    est = D.lanczos_bounds(D.StoreOperator(res.store))
    assert est.lambda_min_lower <= est.lambda_min_upper == 0.0
    assert not est.certified_min
