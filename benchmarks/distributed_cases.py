"""Benchmark group "distributed" (``python3 -m benchmarks.run --only distributed``):

* CPU: the same kernel computed by 1 and by 2 processes under torchrun (Gloo), each into a
  fresh npy store; the time of ``distributed.empirical_ntk`` on rank 0 (start-up excluded),
  as a ratio. Report the core count with it: on 2 shared cores expect little.
* One device (CPU here, a GPU with ``--device cuda``): the distributed path in one process
  (store writes with digests and fsync; and without a store, tiles gathered) against the
  plain ``lplr_fast.empirical_ntk`` — the overhead of the distributed machinery
  (target on a GPU: ≤ 5%).

``smoke=True`` runs tiny cases once and checks the results agree (no timing claims): what
the test suite runs.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lplr_fast
from lplr_fast import distributed as D
from lplr_fast.distributed.training import gathered_ntk

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlp(widths: list[int], device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(device)


def worker_main() -> None:
    """Run under torchrun: time distributed.empirical_ntk once (after a warm-up call on a
    scratch store); rank 0 writes {"seconds": ...} to argv[1]."""
    import torch.distributed as dist

    out, n, block, width = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    model = _mlp([64, width, width, 10], torch.device("cpu"))
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1))
    D.empirical_ntk(model, x[: 2 * block], store=out / "warm", block_size=block)
    dist.barrier()
    start = time.perf_counter()
    D.empirical_ntk(model, x, store=out / "store", block_size=block)
    dist.barrier()
    seconds = time.perf_counter() - start
    if dist.get_rank() == 0:
        (out / "time.json").write_text(json.dumps({"seconds": seconds}))
    dist.destroy_process_group()


def _launch(nproc: int, n: int, block: int, width: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "benchmarks.distributed_cases", tmp, str(n),
            str(block), str(width),
        ]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=3600)
        return json.loads((Path(tmp) / "time.json").read_text())["seconds"]


def _one_device(device: torch.device, n: int, width: int, block: int, repeat: int):
    model = _mlp([64, width, width, 10], device)
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1)).to(device)

    def timed(fn):
        fn()  # warm-up (and the result to compare)
        times = []
        for _ in range(repeat):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)

    with tempfile.TemporaryDirectory() as tmp:
        plain = lplr_fast.empirical_ntk(model, x, block_size=block)
        stores = iter(range(10**6))
        stored = D.empirical_ntk(model, x, store=f"{tmp}/check", block_size=block)
        gathered = gathered_ntk(model, x, dtype=None, block_size=block)
        scale = plain.abs().max().item()
        deviation = max(
            (stored.store.to_dense().to(device) - plain).abs().max().item(),
            (gathered - plain).abs().max().item(),
        ) / max(scale, 1e-300)
        t_plain = timed(lambda: lplr_fast.empirical_ntk(model, x, block_size=block))
        t_store = timed(
            lambda: D.empirical_ntk(model, x, store=f"{tmp}/s{next(stores)}", block_size=block)
        )
        t_gather = timed(lambda: gathered_ntk(model, x, dtype=None, block_size=block))
    return deviation, t_plain, t_store, t_gather


def group_distributed(device, rows, quick, gemm, smoke: bool = False) -> None:
    n, width, block = (48, 32, 16) if smoke else ((512, 256, 128) if quick else (2048, 1024, 512))
    repeat = 1 if smoke else 3
    name = f"MLP 64→{width}→{width}→10, n={n}, full, block {block}"
    deviation, t_plain, t_store, t_gather = _one_device(device, n, width, block, repeat)
    limit = 0.0 if device.type == "cpu" else 1e-5  # GPU diagonal tiles are symmetrised
    if deviation > limit:
        raise AssertionError(f"distributed path and plain empirical_ntk differ by {deviation:.1e}")
    rows.append({"case": f"{name}, one {device.type}", "impl": "plain empirical_ntk",
                 "median_s": t_plain, "ratio_to_ours": 1.0})  # fmt: skip
    for impl, t in (("distributed.empirical_ntk → npy store", t_store),
                    ("distributed gathered (no store)", t_gather)):  # fmt: skip
        rows.append({"case": f"{name}, one {device.type}", "impl": impl, "median_s": t,
                     "ratio_to_ours": t / t_plain,
                     "note": f"overhead {t / t_plain - 1:.1%} (GPU target ≤ 5%)"})  # fmt: skip
    if device.type != "cpu":
        return
    threads = 1
    one = _launch(1, n, block, width, threads)
    two = _launch(2, n, block, width, threads)
    cores = os.cpu_count()
    rows.append({"case": f"{name}, torchrun Gloo, {threads} thread/rank, {cores} cores",
                 "impl": "1 process", "median_s": one, "ratio_to_ours": 1.0})  # fmt: skip
    rows.append({"case": f"{name}, torchrun Gloo, {threads} thread/rank, {cores} cores",
                 "impl": "2 processes", "median_s": two, "ratio_to_ours": two / one,
                 "note": f"speed-up {one / two:.2f}× on {cores} cores"})  # fmt: skip


if __name__ == "__main__":
    worker_main()
