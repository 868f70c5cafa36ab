"""Start N local processes of ``tests.dist_worker`` forming one Gloo group on 127.0.0.1 (the
environment torchrun would set), wait for them with a deadline, return their outcomes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Outcome:
    returncode: int | None  # None: still running at the deadline (killed)
    stdout: str
    stderr: str


def launch(
    scenario: str,
    world: int,
    out: Path,
    *args: str,
    deadline: float = 240.0,
    kill: tuple[int, float] | None = None,
) -> list[Outcome]:
    """Run ``python -m tests.dist_worker SCENARIO OUT ARGS...`` on ``world`` ranks;
    ``kill = (rank, seconds)`` SIGKILLs that rank that long after the start."""
    port = free_port()
    procs = []
    logs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
        }
        out_log = open(out / f"rank{rank}.out", "w+")  # noqa: SIM115
        err_log = open(out / f"rank{rank}.err", "w+")  # noqa: SIM115
        logs.append((out_log, err_log))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.dist_worker", scenario, str(out), *args],
                cwd=ROOT,
                env=env,
                stdout=out_log,
                stderr=err_log,
                stdin=subprocess.DEVNULL,
            )
        )
    end = time.monotonic() + deadline
    if kill is not None:
        victim, delay = kill
        try:
            procs[victim].wait(timeout=delay)
        except subprocess.TimeoutExpired:
            procs[victim].send_signal(signal.SIGKILL)
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    outcomes = []
    for code, (o, e) in zip(codes, logs, strict=True):
        o.seek(0)
        e.seek(0)
        outcomes.append(Outcome(code, o.read(), e.read()))
        o.close()
        e.close()
    return outcomes
