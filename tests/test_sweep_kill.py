"""``lplr-fast sweep`` killed with SIGKILL (a real subprocess) and rerun: finished points are
kept and not recomputed, the interrupted point resumes from its checkpoint, and the final
table equals that of an uninterrupted sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[experiment]
name = "kill-test"
[data]
dataset = "teacher"
n_per_class = 24
[model]
depth = 1
[train]
lr = 0.05
steps = {steps}
[diagnostics]
ntk_every = 100
[[grid]]
width = [48, 64, 80]
"""
EXACT = ["final_loss", "loss0", "final_param_drift", "max_param_drift", "lr", "n", "k"]
CLOSE = ["lambda0", "pl_envelope", "pl_cert_min", "fitted_rate", "ntk_rel_drift_final"]


def _sweep(config: Path, out: Path) -> subprocess.Popen:
    # one thread: these models are tiny, and a shared 2-core machine makes thread pools spin
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "lplr_fast.cli",
        "sweep",
        str(config),
        "--out",
        str(out),
        "--quiet",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads((out / "table.json").read_text())}


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before the kill point: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - start > timeout:
            proc.kill()
            pytest.fail("kill point not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The config and the folder of an uninterrupted sweep."""
    folder = tmp_path_factory.mktemp("sweep")
    config = folder / "sweep.toml"
    config.write_text(CONFIG.format(steps=1500))
    done = _sweep(config, folder / "reference")
    assert done.wait(timeout=900) == 0, done.communicate()[1]
    return config, folder / "reference"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first checkpoint", "second point running"])
def test_sweep_survives_sigkill(tmp_path, moment, reference):
    config, reference = reference
    out = tmp_path / "killed"
    proc = _sweep(config, out)
    points = out / "points"

    def reached() -> bool:
        if moment == "first checkpoint":
            return any(points.glob("*/run/checkpoint.pt"))
        rows = list(points.glob("*/row.json"))
        return len(rows) == 1 and len(list(points.glob("*/run/checkpoint.pt"))) == 2

    _wait_for(reached, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    finished = {p: p.stat().st_mtime_ns for p in points.glob("*/row.json")}
    assert len(finished) < 3  # killed before the end

    rerun = _sweep(config, out)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr
    if finished:
        assert f"reused {len(finished)} finished run(s)" in stdout
    for path, mtime in finished.items():  # finished points are not recomputed
        assert path.stat().st_mtime_ns == mtime

    got, want = _rows(out), _rows(reference)
    assert got.keys() == want.keys() and len(got) == 3
    for key, row in want.items():
        for name in EXACT:
            assert got[key][name] == row[name], (name, got[key][name], row[name])
        for name in CLOSE:
            assert got[key][name] == pytest.approx(row[name], rel=1e-9, abs=1e-300), name
        history = json.loads((out / "points" / row["folder"] / "run" / "history.json").read_text())
        assert [r["step"] for r in history] == list(range(1501))  # nothing lost, nothing twice

    again = _sweep(config, out)  # a finished sweep: a no-op
    stdout, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "reused 3 finished run(s)" in stdout
