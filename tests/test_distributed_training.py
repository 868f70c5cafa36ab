"""Data-parallel train() on 2 and 3 local Gloo processes against one process: the same
history to rounding (GD and SGD with momentum), only rank 0 writes, a resumed (extended)
run equals an uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch

from tests.dist_launch import launch
from tests.dist_train import run_one

NTK_KEYS = ("lambda_min_lower", "lambda_max_upper", "ntk_drift_op")


def close_histories(got: list[dict], want: list[dict], rel: float | None) -> None:
    """Rows equal key by key, floats to ``rel`` (None: bitwise), NaN matching NaN."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert set(a) == set(b)
        for key, value in b.items():
            other = a[key]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(other), (key, a["step"])
            elif isinstance(value, float) and rel is not None:
                assert other == pytest.approx(value, rel=rel, abs=1e-300), (key, a["step"])
            else:
                assert other == value


@pytest.mark.parametrize(("world", "optimizer"), [(2, "gd"), (3, "sgd")])
def test_data_parallel_history_equals_one_process(tmp_path, world, optimizer):
    outcomes = launch("train", world, tmp_path, optimizer, "4", "8")
    for rank, o in enumerate(outcomes):
        assert o.returncode == 0, f"rank {rank}:\n{o.stderr[-4000:]}"
    found = [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(world)]
    reference = run_one(None, optimizer, 8)
    for rank in range(world):
        # the extended run resumed from rank 0's checkpoint of the 4-step run
        history = found[rank][8]["history"]
        close_histories(history, found[0][8]["history"], None)  # every rank: the same bits
        close_histories(history, reference["history"], rel=1e-9)
        assert any(k in row for row in history for k in NTK_KEYS)
    run_dir = tmp_path / f"run-{optimizer}"
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "history.csv").is_file()
    assert not list(run_dir.glob(".*.pt.*"))  # no temporaries left by other ranks


def test_ranks_with_different_arguments_are_refused(tmp_path):
    outcomes = launch("train", 2, tmp_path, "mismatch")
    for rank, o in enumerate(outcomes):
        assert o.returncode == 0, o.stderr[-3000:]
        error = torch.load(tmp_path / f"result{rank}.pt", weights_only=False)["error"]
        assert error is not None and "disagree about the run" in error
    assert not (tmp_path / "run-mismatch" / "derived.pt").exists()
