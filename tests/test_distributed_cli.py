"""The command line under torchrun (2 CPU processes, Gloo): ``lplr-fast ntk`` gives the
single-process store bit for bit and resumes; ``lplr-fast sweep`` gives the single-process
table to rounding, written once by rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.dist_launch import ROOT, free_port

CONFIG = """
[data]
dataset = "teacher"
n_per_class = 7
[model]
width = 12
depth = 1
[train]
lr = "auto"
steps = 4
[diagnostics]
ntk_every = 2
"""


def cli(*args: str, nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "lplr_fast.cli", *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "lplr_fast.cli", *args,
        ]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


def test_ntk_under_torchrun_equals_one_process_and_resumes(tmp_path, config):
    one = cli("ntk", str(config), "--out", str(tmp_path / "one"), "--block-size", "4", "--quiet")
    two = cli("ntk", str(config), "--out", str(tmp_path / "two"), "--block-size", "4", nproc=2)
    assert "tiles computed 10, reused 0" in one.stdout and "probe check: passed" in one.stdout
    assert two.stdout.count("store:") == 1  # rank 0 reports
    assert "tiles computed 10, reused 0" in two.stdout
    a = np.load(tmp_path / "one" / "kernel.npy")
    b = np.load(tmp_path / "two" / "kernel.npy")
    assert np.array_equal(a, b)  # bit for bit
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    sa["bounds"].pop("seconds"), sb["bounds"].pop("seconds")
    for key in ("bounds", "gershgorin", "trace_bounds"):
        assert sa[key] == sb[key]
    assert sa["store_bounds"]["dense"]["certified_min"]
    again = cli("ntk", str(config), "--out", str(tmp_path / "two"), "--block-size", "4", nproc=2)
    assert "tiles computed 0, reused 10" in again.stdout


def test_foreign_store_refused_on_the_command_line(tmp_path, config):
    cli("ntk", str(config), "--out", str(tmp_path / "s"), "--block-size", "4", "--quiet")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lplr_fast.cli", "ntk", str(config), "--out", str(tmp_path / "s"),
         "--block-size", "4", "--compute", "trace", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 2
    assert "different kernel" in done.stderr and "compute" in done.stderr


def test_sweep_under_torchrun(tmp_path, config):
    cli("sweep", str(config), "--out", str(tmp_path / "one"), "--quiet")
    two = cli("sweep", str(config), "--out", str(tmp_path / "two"), "--quiet", nproc=2)
    assert two.stdout.count("table:") == 1
    a = json.loads((tmp_path / "one" / "table.json").read_text())
    b = json.loads((tmp_path / "two" / "table.json").read_text())
    assert len(a) == len(b) == 1
    for key in ("final_loss", "lambda0", "beta0", "pl_cert_min", "pl_envelope"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-9), key
    assert b[0]["verdict"] == a[0]["verdict"]


TRAIN_CONFIG = """
[data]
dataset = "teacher"
n = 12
[model]
width = 16
depth = 1
[train]
lr = "auto"
steps = 6
[diagnostics]
ntk_every = 3
"""


def test_train_under_torchrun(tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(TRAIN_CONFIG)
    cli("train", str(config), "--out", str(tmp_path / "one"), "--quiet")
    two = cli("train", str(config), "--out", str(tmp_path / "two"), "--quiet", nproc=2)
    assert two.stdout.count("run written to") == 1  # rank 0 only
    rows_a = json.loads((tmp_path / "one" / "history.json").read_text())
    rows_b = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("loss", "grad_norm_sq", "lambda_min_lower", "lambda_max_upper"):
            if isinstance(ra.get(key), float):
                assert rb[key] == pytest.approx(ra[key], rel=1e-9), key
