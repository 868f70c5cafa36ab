"""The cost model of docs/SCALING.md, as code: modelled times for the distributed NTK of the
two reference cases on 8 and 64 GPUs. Nothing here is measured; every assumption is an
argument (defaults in ASSUMED) and the output says so.

    python3 -m benchmarks.scaling_model [--flops 25e12] [--store-gbs 20] ...
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass

from lplr_fast.distributed.schedule import TileGrid, split

# Assumptions (modelled, not measured): sustained FP32 GEMM rate per GPU with TF32 off (the
# engine computes in full precision), about half an H100/H200's peak; aggregate write rate
# of the shared file system; per-rank tile hashing rate (SHA-256 tree, 8 threads at ≈1 GB/s);
# all-reduce bus bandwidth within a node (NVLink) and across nodes (InfiniBand NDR, 8 GPUs
# per node).
ASSUMED = {
    "flops": 25e12,
    "store_gbs": 20.0,
    "hash_gbs": 8.0,
    "nvlink_gbs": 300.0,
    "ib_gbs": 40.0,
    "itemsize": 4,
    "gpus_per_node": 8,
    "gpu_mem_gb": 141.0,
}

WIDTHS = [3072, 4096, 4096, 10]  # MLP 3072→4096→4096→10 (CIFAR-sized inputs)


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    k: int
    compute: str  # "full" | "trace"
    block: int


CASES = [
    Case("n = 50,000, k = 10, full", 50_000, 10, "full", 1024),
    Case("n = 200,000, trace", 200_000, 10, "trace", 4096),
]


def pair_flops(compute: str, k: int) -> float:
    """Flops per sample pair of the structured Linear rule, summed over layers: the
    activation Gram (d_in) and the cotangent Gram (k²·d_out full, k·d_out trace)."""
    kk = k * k if compute == "full" else k
    return sum(2.0 * (d_in + kk * d_out) for d_in, d_out in itertools.pairwise(WIDTHS))


def params() -> int:
    return sum(d_in * d_out + d_out for d_in, d_out in itertools.pairwise(WIDTHS))


def feature_flops_per_sample(k: int) -> float:
    """One forward and k batched backward passes (≈ 2× a forward each) per sample."""
    return (1 + 2 * k) * 2.0 * params()


def feature_bytes_per_sample(k: int, itemsize: int) -> int:
    """What the engine keeps per sample and Linear layer: the input (d_in) and the k output
    cotangents (k·d_out)."""
    return sum((d_in + k * d_out) * itemsize for d_in, d_out in itertools.pairwise(WIDTHS))


def simulated_feature_samples(case: Case, world: int, cache_samples: int) -> int:
    """Samples whose features the busiest rank computes, simulating the engine: its tiles
    in row-major order, a block's features computed on first use and kept while the cache
    (1/8 of the device memory) has room, never evicted (engine._BlockFeatures)."""
    grid = TileGrid(case.n, case.n, case.block, True)
    worst = 0
    for tiles in split(grid, world):
        cached: set[int] = set()
        room, computed = cache_samples, 0
        for bi, bj in tiles:
            for b in dict.fromkeys((bi, bj)):
                if b in cached:
                    continue
                size = min(case.block, case.n - b * case.block)
                computed += size
                if size <= room:
                    cached.add(b)
                    room -= size
        worst = max(worst, computed)
    return worst


def model(case: Case, world: int, a: dict[str, float]) -> dict[str, float]:
    n, k = case.n, case.k
    blocks = math.ceil(n / case.block)
    pairs = n * (n + 1) / 2
    kernel_s = pairs * pair_flops(case.compute, k) / a["flops"] / world
    per_sample = feature_bytes_per_sample(k, int(a["itemsize"]))
    cache_samples = int(a["gpu_mem_gb"] * 1e9 / 8 // per_sample)
    feature_samples = simulated_feature_samples(case, world, cache_samples)
    feature_s = feature_samples * feature_flops_per_sample(k) / a["flops"]
    entries = k * k if case.compute == "full" else 1
    stored_bytes = (blocks * (blocks + 1) / 2) * case.block**2 * entries * a["itemsize"]
    store_s = stored_bytes / (a["store_gbs"] * 1e9)  # aggregate: does not shrink with W
    hash_s = stored_bytes / world / (a["hash_gbs"] * 1e9)
    nodes = math.ceil(world / a["gpus_per_node"])
    bus = a["nvlink_gbs"] if nodes == 1 else a["ib_gbs"]
    p_bytes = params() * a["itemsize"]
    allreduce_s = 2 * (world - 1) / world * p_bytes / (bus * 1e9)
    matvec_s = 3 * 2.0 * params() * n / world / a["flops"]  # VJP + JVP ≈ 3 forwards
    return {
        "tiles": blocks * (blocks + 1) / 2,
        "tiles_per_rank": blocks * (blocks + 1) / 2 / world,
        "kernel_s": kernel_s,
        "feature_s": feature_s,
        "feature_passes": feature_samples / n,
        "stored_gb": stored_bytes / 1e9,
        "per_rank_gb": stored_bytes / world / 1e9,
        "store_s": store_s,
        "hash_s": hash_s,
        "total_s": kernel_s + feature_s + hash_s + store_s,  # one rank, writes not overlapped
        "allreduce_mb": p_bytes / 1e6,
        "lanczos_step_s": matvec_s + allreduce_s,
        "allreduce_s": allreduce_s,
        "store_matvec_mb": n * (k if case.compute == "full" else 1) * 8 / 1e6,
    }


def table(a: dict[str, float]) -> str:
    head = (
        "| case | GPUs | tiles/rank | kernel s | features s (samples) | hash s | "
        "store GB (per rank) | store s | total s | Lanczos step s (all-reduce MB) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for case in CASES:
        for world in (8, 64):
            m = model(case, world, a)
            lines.append(
                f"| {case.name} | {world} | {m['tiles_per_rank']:.0f} | {m['kernel_s']:.1f} | "
                f"{m['feature_s']:.1f} ({m['feature_passes']:.2g}×n) | {m['hash_s']:.1f} | "
                f"{m['stored_gb']:.0f} "
                f"({m['per_rank_gb']:.1f}) | {m['store_s']:.0f} | {m['total_s']:.0f} | "
                f"{m['lanczos_step_s'] * 1e3:.1f} ms ({m['allreduce_mb']:.0f}) |"
            )
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for key, value in ASSUMED.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=value)
    args = vars(parser.parse_args())
    a = {k: args[k] for k in ASSUMED}
    print(f"MODELLED (not measured): MLP {'→'.join(map(str, WIDTHS))}, P = {params():,}")
    print(f"assumptions: {a}")
    for case in CASES:
        print(f"{case.name}: {pair_flops(case.compute, case.k) / 1e6:.3f} MFLOP per sample pair")
    print(table(a))


if __name__ == "__main__":
    main()
