"""One rank of a distributed test (started by tests/dist_launch.py, or by torchrun): joins
the Gloo group from the environment, runs a scenario, saves what it found to
OUT/result{rank}.pt for the test to compare with single-process references."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lplr_fast import distributed as D


def model_and_data(n: int = 11, n2: int = 7, k: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.LayerNorm(12), torch.nn.Linear(12, k)
    ).double()
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    x2 = torch.randn(n2, 5, generator=gen, dtype=torch.float64)
    return model, x, x2


KERNEL_CASES = [  # (name, n, block, compute, cross)
    ("full-sym", 11, 4, "full", False),
    ("trace-sym", 11, 4, "trace", False),
    ("diag-sym", 11, 4, "diagonal", False),
    ("full-cross", 11, 4, "full", True),
    ("trace-cross", 10, 3, "trace", True),
    ("diag-cross", 9, 4, "diagonal", True),
    ("tiny-sym", 3, 4, "full", False),  # one tile, more ranks than tiles
]


def kernels(out: Path, backend: str) -> dict:
    found = {}
    for name, n, block, compute, cross in KERNEL_CASES:
        model, x, x2 = model_and_data(n)
        res = D.empirical_ntk(
            model, x, x2 if cross else None, store=out / f"store-{name}", compute=compute,
            block_size=block, backend=backend,
        )  # fmt: skip
        found[name] = {
            "kernel": res.store.to_dense(),
            "bounds": res.bounds,
            "trace_bounds": None if res.streaming is None else res.streaming.trace_bounds(),
            "gershgorin": None if res.streaming is None else res.streaming.gershgorin(),
            "computed": res.computed,
            "reused": res.reused,
            "mine": res.my_tiles,
            "probe_passed": res.probe.passed,
        }
    return found


def operators(out: Path) -> dict:
    model, x, _ = model_and_data(13)
    op = D.DistributedNTKOperator(model, x, chunk_size=2)
    lz = D.lanczos_bounds(op, rtol=1e-10)
    v = torch.arange(op.shape[0], dtype=torch.float64) / 7.0
    product = op.matvec(v)
    res = D.empirical_ntk(model, x, store=out / "store-op", block_size=4)
    sb = D.store_bounds(res.store, rtol=1e-10)
    return {
        "lanczos": lz,
        "product": product,
        "store": sb,
        "store_product": D.StoreOperator(res.store).matvec(v),
    }


def die_after_first_tile(rank_to_kill: int) -> None:
    """Make rank ``rank_to_kill`` SIGKILL itself right after writing its first tile."""
    if dist.get_rank() != rank_to_kill:
        return
    original = D.store.TileStore.write_tile

    def write_then_die(self, tile, data, rank=0):
        original(self, tile, data, rank)
        os.kill(os.getpid(), signal.SIGKILL)

    D.store.TileStore.write_tile = write_then_die


def killed(out: Path, victim: str) -> dict:
    die_after_first_tile(int(victim))
    model, x, _ = model_and_data(23)
    try:
        timeout = datetime.timedelta(seconds=60)
        D.empirical_ntk(model, x, store=out / "store-kill", block_size=4, timeout=timeout)
    except D.DistributedError as exc:
        return {"error": str(exc)}
    return {"error": None}


def die_at(phase: str, victim: int) -> None:
    """SIGKILL rank ``victim`` at a phase: "create" (store array made, no manifest yet),
    "tile2" (after its second tile), "merge" (exporting its bounds), "summary" (rank 0
    writing summary.json)."""
    if dist.get_rank() != victim:
        return

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if phase == "create":
        D.store._NpyArray.create = staticmethod(
            lambda path, manifest, _real=D.store._NpyArray.create: (_real(path, manifest), die())
        )
    elif phase == "tile2":
        original = D.store.TileStore.write_tile
        count = [0]

        def write(self, tile, data, rank=0):
            original(self, tile, data, rank)
            count[0] += 1
            if count[0] == 2:
                die()

        D.store.TileStore.write_tile = write
    elif phase == "merge":
        D.kernel.StreamingBounds.export = die
    elif phase == "summary":
        D.store.TileStore.write_summary = die


def resume(out: Path, kill: str | None = None) -> dict:
    if kill:
        phase, victim = kill.split(":")
        die_at(phase, int(victim))
    model, x, _ = model_and_data(23)
    backend = os.environ.get("LPLR_TEST_BACKEND", "npy")
    res = D.empirical_ntk(model, x, store=out / "store-kill", block_size=4, backend=backend)
    return {
        "kernel": res.store.to_dense(),
        "computed": res.computed,
        "reused": res.reused,
        "bounds": res.bounds,
    }


def failing(out: Path) -> dict:
    """Rank 1's writes fail (a full disk): every rank must fail, none hang."""
    if dist.get_rank() == 1:

        def full_disk(self, tile, data, rank=0):
            raise OSError(28, "No space left on device")

        D.store.TileStore.write_tile = full_disk
    model, x, _ = model_and_data(11)
    try:
        D.empirical_ntk(model, x, store=out / "store-fail", block_size=4)
    except D.DistributedError as exc:
        return {"error": f"DistributedError: {exc}"}
    except OSError as exc:
        return {"error": f"OSError: {exc}"}
    return {"error": None}


def mismatch(out: Path) -> dict:
    model, x, _ = model_and_data(11)
    if dist.get_rank() == 1:
        x = x.clone()
        x[3, 2] += 1e-9
    found = {"error": None, "attribute_error": None}
    try:
        D.empirical_ntk(model, x, store=out / "store-mismatch", block_size=4)
    except D.DistributedError as exc:
        found["error"] = str(exc)
    model, x, _ = model_and_data(11)
    model.tag = f"device-{dist.get_rank()}"  # a per-rank attribute: another model's state
    try:
        D.empirical_ntk(model, x, store=out / "store-mismatch-2", block_size=4)
    except D.DistributedError as exc:
        found["attribute_error"] = str(exc)
    return found


def arguments(out: Path) -> dict:
    """Rank 1 passes another value of an argument that decides the collectives: every rank
    must raise a DistributedError naming it at once (not hang until the group's timeout)."""
    model, x, _ = model_and_data(11)
    rank = dist.get_rank()
    found: dict = {}

    def attempt(name, call):
        try:
            call()
            found[name] = None
        except D.DistributedError as exc:
            found[name] = str(exc)

    store = out / "store-args"
    one = {"block_size": None if rank == 1 else 4}
    attempt("block_size", lambda: D.empirical_ntk(model, x, store=store, **one))
    one = {"timeout": 5} if rank == 1 else {}
    attempt("timeout", lambda: D.empirical_ntk(model, x, store=store, block_size=4, **one))
    res = D.empirical_ntk(model, x, store=store, block_size=4)
    one = {"dense_limit": 0} if rank == 1 else {}
    attempt("dense_limit", lambda: D.store_bounds(res.store, **one))
    one = {"rtol": 1e-2} if rank == 1 else {}
    attempt("rtol", lambda: D.store_bounds(res.store, **one))
    op = D.DistributedNTKOperator(model, x)
    one = {"max_iter": 3} if rank == 1 else {}
    attempt("max_iter", lambda: D.lanczos_bounds(op, **one))
    one = {"seed": 1} if rank == 1 else {}
    attempt("seed", lambda: D.lanczos_bounds(op, **one))
    if rank == 1:  # another device's default limit on rank 1: rank 0's decides for all
        D.operator.device_dense_limit = lambda device: 0
    found["dense"] = D.store_bounds(res.store, lanczos=False).dense
    return found


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    try:
        if scenario == "kernels":
            found = kernels(out, sys.argv[3])
        elif scenario == "operators":
            found = operators(out)
        elif scenario == "killed":
            found = killed(out, sys.argv[3])
        elif scenario == "resume":
            found = resume(out, sys.argv[3] if len(sys.argv) > 3 else None)
        elif scenario == "failing":
            found = failing(out)
        elif scenario == "mismatch":
            found = mismatch(out)
        elif scenario == "arguments":
            found = arguments(out)
        elif scenario == "train":
            from tests.dist_train import run as run_train

            found = run_train(out, sys.argv[3:])
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        torch.save(found, out / f"result{rank}.pt")
    finally:
        with contextlib.suppress(RuntimeError):  # leave together
            dist.barrier()
    # Skip the C++ teardown of the process group: under heavy load it has aborted a rank
    # ("terminate called without an active exception") after all work was saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
