"""Cost of the probe self-check, as ratios to the same call with ``verify="off"``:

    python -m benchmarks.probe_cost [--n 256] [--width 512] [--k 10] [--repeat 3]
                                    [--modes full,trace,diagonal]

For each mode (compute = full / trace / diagonal), runs empirical_ntk with verify = "off",
"sampled" and "probe" (the default, every sample probed), interleaved, and prints one JSON
line per mode: median seconds per setting and the ratios probe/off, sampled/off. Ratios only:
absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import lplr_fast

SETTINGS = ("off", "sampled", "probe")


def model_and_data(n: int, width: int, k: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, k)
    )
    return model.eval(), torch.randn(n, 64)


def median_seconds(model: nn.Module, x: torch.Tensor, compute: str, repeat: int) -> dict:
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for verify in SETTINGS:  # warm-up
        lplr_fast.empirical_ntk(model, x, compute=compute, verify=verify)
    for _ in range(repeat):
        for verify in SETTINGS:
            start = time.perf_counter()
            lplr_fast.empirical_ntk(model, x, compute=compute, verify=verify)
            times[verify].append(time.perf_counter() - start)
    return {s: statistics.median(t) for s, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="full,trace,diagonal")
    args = parser.parse_args()
    model, x = model_and_data(args.n, args.width, args.k)
    for compute in args.modes.split(","):
        med = median_seconds(model, x, compute, args.repeat)
        print(
            json.dumps(
                {
                    "compute": compute,
                    "n": args.n,
                    "width": args.width,
                    "k": args.k,
                    "device": str(x.device),
                    "median_s": med,
                    "probe_over_off": med["probe"] / med["off"],
                    "sampled_over_off": med["sampled"] / med["off"],
                }
            )
        )


if __name__ == "__main__":
    main()
