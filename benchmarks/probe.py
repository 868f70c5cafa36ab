"""Our side of the cross-framework cases, in a fresh process like nt_baseline.py so that
time and peak memory are measured the same way for both:

    python -m benchmarks.probe CASE.npz [--trace] [--repeat 3] [--save K.npy]

Prints one JSON line: median_s/min_s/max_s, first_s (first call), peak_mib (peak RSS growth
during the first call, over the resident size after loading; freed memory that the allocator
keeps would hide later calls' use; see peakmem.py), output_mib.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import lplr_fast

from .models import ResNetCNN, mlp
from .peakmem import PeakMemory


def load(path: str) -> tuple[torch.nn.Module, torch.Tensor]:
    data = np.load(path)
    params = {k[2:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("p:")}
    if str(data["kind"]) == "mlp":
        layers = sorted({n.split(".")[0] for n in params}, key=int)
        widths = [params[f"{layers[0]}.weight"].shape[1]]
        widths += [params[f"{layer}.weight"].shape[0] for layer in layers]
        act = str(data["act"]) if "act" in data.files else "tanh"
        model = mlp(widths, act)
    else:
        c = params["stem.weight"].shape[0]
        model = ResNetCNN(c=c, k=params["head.weight"].shape[0])
    model.load_state_dict(params)
    return model.eval(), torch.from_numpy(data["x"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--save", default=None)
    parser.add_argument("--implementation", default="structured")
    args = parser.parse_args()
    model, x = load(args.case)
    compute = "trace" if args.trace else "full"

    def run() -> torch.Tensor:
        return lplr_fast.empirical_ntk(
            model, x, compute=compute, implementation=args.implementation
        )

    with PeakMemory() as memory:  # the first call: everything it needs, workspaces included
        start = time.perf_counter()
        kernel = run()
        first = time.perf_counter() - start
    del kernel
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        kernel = run()
        times.append(time.perf_counter() - start)
    if args.save:
        np.save(args.save, kernel.numpy())
    out_mib = kernel.numel() * kernel.element_size() / 2**20
    print(
        json.dumps(
            {
                "first_s": first,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "peak_mib": memory.mib,
                "output_mib": out_mib,
                "shape": list(kernel.shape),
                "k": int(model(x[:1]).numel()),
            }
        )
    )


if __name__ == "__main__":
    main()
