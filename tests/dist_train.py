"""Training runs shared by tests/test_distributed_training.py: the same function runs in one
process (the reference) and on every rank of a group (tests/dist_worker.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from lplr_fast import train
from lplr_fast.training import Diagnostics


def problem(n: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
    ).double()
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return model, x, y


def run_one(out: Path | None, optimizer: str, steps: int, n: int = 10):
    model, x, y = problem(n)
    result = train(
        model, x, y, optimizer=optimizer, lr="auto", steps=steps,
        batch_size=4 if optimizer == "sgd" else None, momentum=0.5 if optimizer == "sgd" else 0,
        diagnostics=Diagnostics(every=1, ntk_every=3), out_dir=out, checkpoint_every=2,
    )  # fmt: skip
    return {"history": result.history, "summary": result.summary}


def mismatched(out: Path) -> dict:
    """Rank 1 asks for another step size: every rank must refuse before training."""
    import torch.distributed as dist

    from lplr_fast.distributed import DistributedError

    model, x, y = problem()
    lr = 0.1 if dist.get_rank() == 1 else 0.2
    try:
        train(model, x, y, lr=lr, steps=2, out_dir=out / "run-mismatch")
    except DistributedError as exc:
        return {"error": str(exc)}
    return {"error": None}


def run(out: Path, args: list[str]) -> dict:
    """args: [optimizer, steps(, steps again...)]: consecutive invocations on one folder;
    or ["mismatch"]."""
    if args == ["mismatch"]:
        return mismatched(out)
    optimizer, *all_steps = args
    found = {}
    for steps in all_steps:
        found[int(steps)] = run_one(out / f"run-{optimizer}", optimizer, int(steps))
    return found
