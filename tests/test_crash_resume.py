"""`lplr-fast train` killed with SIGKILL at random moments (during start-up, the NTK at
initialisation, steps, NTK steps, checkpoint writes) resumes on the next invocation and ends
with files bitwise identical to an uninterrupted run's; rerunning a finished run is a no-op.

Real subprocesses, real SIGKILL, at the default thread count.
``LPLR_KILL_TEST_SEED=...`` draws other kill schedules (for repeated runs).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFIGS = {
    "gd-auto": """
[data]
n = 24
[model]
width = 96
[train]
lr = "auto"
lr_fraction = 0.9
steps = 60
checkpoint_every = 3
[diagnostics]
every = 1
ntk_every = 5
""",
    "sgd-momentum": """
[data]
n = 24
seed = 3
[model]
width = 64
seed = 2
[train]
optimizer = "sgd"
lr = 0.05
momentum = 0.5
batch_size = 5
steps = 60
seed = 7
checkpoint_every = 2
[diagnostics]
every = 2
ntk_every = 6
ntk_subset = 10
""",
}
RESULT_FILES = ("history.json", "history.csv", "summary.json", "summary.csv", "config.json")


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _command(config: Path, out: Path) -> list[str]:
    cli = [sys.executable, "-m", "lplr_fast.cli"]
    return [*cli, "train", str(config), "--out", str(out), "--quiet"]


def _run_to_end(config: Path, out: Path, env: dict[str, str]) -> None:
    done = subprocess.run(_command(config, out), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _stamp(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def _run_with_kills(config: Path, out: Path, env: dict[str, str], rng: random.Random) -> int:
    """Start the run again and again, SIGKILLing it at a random moment, until it finishes
    (at most 6 kills, then it runs to the end). A quarter of the kills land in the first
    seconds (start-up, Θ₀ and β₀, the first writes); the others a random fraction of a
    second after the process wrote its first checkpoint, inside the training loop (steps,
    NTK steps, checkpoint writes). Returns the number of kills."""
    kills = 0
    while True:
        proc = subprocess.Popen(
            _command(config, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if kills >= 6:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()
            return kills
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, 4.0))
        else:
            before, started = _stamp(out / "checkpoint.pt"), time.monotonic()
            while _stamp(out / "checkpoint.pt") == before and proc.poll() is None:
                if time.monotonic() - started > 300:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()
            return kills
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        kills += 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per config: (config file, folder of an uninterrupted run), computed once."""
    runs = {}
    for name, text in CONFIGS.items():
        folder = tmp_path_factory.mktemp(name)
        config = folder / "run.toml"
        config.write_text(text)
        _run_to_end(config, folder / "reference", _env(threads=None))
        runs[name] = (config, folder / "reference")
    return runs


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moments_resumes_bitwise(name, seed, tmp_path, uninterrupted):
    config, reference = uninterrupted[name]
    env = _env(threads=None)
    out = tmp_path / "killed"
    schedule = random.Random(f"{name}-{seed}-{os.environ.get('LPLR_KILL_TEST_SEED', '')}")
    kills = _run_with_kills(config, out, env, schedule)
    print(f"{name} seed {seed}: {kills} SIGKILLs")
    for file in RESULT_FILES:
        assert (out / file).read_bytes() == (reference / file).read_bytes(), (file, kills)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporaries left"
    # a finished run: the next invocation changes nothing and exits 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    _run_to_end(config, out, env)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
