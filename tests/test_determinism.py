"""Same inputs, same machine, same thread count → bitwise the same outputs: every public
computation called twice in one process, the training CLI twice in fresh processes.

Two thread settings: one thread (the Python side: seeded start vectors, no global RNG, no
choice made from the machine's load) and the default thread count, where the C++ reductions
must also fold in a fixed order.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import lplr_fast
import lplr_fast.ntk.engine as engine
from lplr_fast import (
    Diagnostics,
    NTKOperator,
    StreamingBounds,
    eig_bounds,
    empirical_ntk,
    ntk_distance,
    train,
)
from lplr_fast.spectrum import as_matrix

from .models import SmallCNN, seeded

THREADS = [pytest.param(1, id="1-thread"), pytest.param(None, id="default-threads")]


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's (and so OpenMP's) thread count for the block; None leaves it as it is."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bits(value: Any) -> Any:
    """Something that compares equal only when the values are bitwise equal."""
    if torch.is_tensor(value):
        data = value.detach().cpu().contiguous().numpy().tobytes()
        return (value.dtype, tuple(value.shape), data)
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bits(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        fields = value.__dataclass_fields__
        return {k: bits(getattr(value, k)) for k in fields if k != "seconds"}
    return value


def same_twice(fn: Callable[[], Any], count: int | None, times: int = 3) -> None:
    with threads(count):
        results = [bits(fn()) for _ in range(times)]
    for other in results[1:]:
        assert other == results[0]


def _model(k: int, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [torch.nn.Linear(6, 64), torch.nn.Tanh(), torch.nn.Linear(64, 32)]
        return torch.nn.Sequential(*layers, torch.nn.Tanh(), torch.nn.Linear(32, k)).double()


def _mlp_and_data(n: int = 40, k: int = 3):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return _model(k), x


@pytest.mark.parametrize("count", THREADS)
@pytest.mark.parametrize("compute", ["full", "trace", "diagonal"])
def test_empirical_ntk(count, compute):
    model, x = _mlp_and_data()
    same_twice(lambda: empirical_ntk(model, x, compute=compute), count)
    same_twice(lambda: empirical_ntk(model, x, x[:7], compute=compute, return_layers=True), count)


@pytest.mark.parametrize("count", THREADS)
def test_empirical_ntk_conv(count):
    with torch.random.fork_rng(devices=[]):
        model = seeded(SmallCNN)
    x = torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    same_twice(lambda: empirical_ntk(model, x, block_size=4), count)


def test_default_block_size_does_not_follow_free_memory(monkeypatch):
    """The tile partition (and so the kernel's last bits) must not depend on how much memory
    happens to be free."""
    model, x = _mlp_and_data(n=64)
    with threads(1):
        first = empirical_ntk(model, x)
        monkeypatch.setattr(engine, "available_memory_bytes", lambda device: 64 * 1024)
        squeezed = empirical_ntk(model, x)
    assert bits(first) == bits(squeezed)


@pytest.mark.parametrize("count", THREADS)
@pytest.mark.parametrize("method", ["cholesky", "dense", "lanczos"])
def test_eig_bounds(count, method):
    model, x = _mlp_and_data(n=60)
    a = as_matrix(empirical_ntk(model, x))
    same_twice(lambda: eig_bounds(a, method=method), count, times=6)


@pytest.mark.parametrize("count", THREADS)
def test_streaming_bounds(count):
    model, x = _mlp_and_data()

    def stream():
        s = StreamingBounds(x.shape[0], per_layer=True)
        empirical_ntk(model, x, bounds=s, block_size=16, return_layers=True)
        return s.bounds(), s.gershgorin(), s.layer_additivity_lower()

    same_twice(stream, count)


@pytest.mark.parametrize("count", THREADS)
def test_ntk_operator_and_lanczos(count):
    model, x = _mlp_and_data(n=20, k=2)
    op = NTKOperator(model, x, chunk_size=7)
    same_twice(lambda: eig_bounds(op, method="lanczos"), count)
    same_twice(lambda: op.diagonal(block_size=8), count)
    same_twice(lambda: ntk_distance(op, NTKOperator(_model(2, seed=5), x)), count)


@pytest.mark.parametrize("count", THREADS)
def test_ntk_distance_stored(count):
    model, x = _mlp_and_data(n=20, k=2)
    k0, k1 = empirical_ntk(model, x), empirical_ntk(_model(2, seed=5), x)
    same_twice(lambda: (ntk_distance(k0, k1), ntk_distance(k0, k1, "fro")), count)


def _train_once(optimizer: str) -> lplr_fast.RunResult:
    model, x = _mlp_and_data(n=16, k=1)
    y = torch.sin(x[:, :1])
    return train(
        model, x, y, optimizer=optimizer, lr="auto", steps=12, seed=4,
        batch_size=5 if optimizer == "sgd" else None,
        diagnostics=Diagnostics(every=1, ntk_every=4, ntk_subset=10),
    )  # fmt: skip


@pytest.mark.parametrize("count", THREADS)
@pytest.mark.parametrize("optimizer", ["gd", "sgd"])
def test_training_history(count, optimizer):
    same_twice(lambda: (_train_once(optimizer).history, _train_once(optimizer).summary), count, 2)


def test_global_rng_is_left_alone():
    """Training, NTKs and bounds draw from their own seeded generators, never the global one."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _train_once("sgd")
    model, x = _mlp_and_data(n=20, k=2)
    eig_bounds(NTKOperator(model, x), method="lanczos")
    assert torch.equal(torch.rand(3), expected)


CLI_CONFIG = """
[data]
n = 20
[model]
width = 64
[train]
lr = "auto"
steps = 15
[diagnostics]
every = 1
ntk_every = 5
"""


@pytest.mark.slow
@pytest.mark.parametrize("count", THREADS)
def test_training_cli_in_fresh_processes(count, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CLI_CONFIG)
    env = dict(os.environ)
    if count is not None:
        env["OMP_NUM_THREADS"] = str(count)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        cmd = [sys.executable, "-m", "lplr_fast.cli", "train", str(config), "--out", str(out)]
        done = subprocess.run([*cmd, "--quiet"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.append({f: (out / f).read_bytes() for f in ("history.json", "summary.json")})
    assert outputs[0] == outputs[1]
    history = json.loads(outputs[0]["history.json"])
    assert len(history) == 16 and math.isfinite(history[-1]["loss"])
