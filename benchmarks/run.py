"""Benchmark script: times a fixed set of cases, writes benchmarks/RESULTS.md and results.json.

    python3 -m benchmarks.run [--device cuda] [--quick] [--out DIR]

Every ratio compares implementations measured in the same process on the same device.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from torch import nn

import lplr_fast
from lplr_fast.gram import gram_accumulate, gram_accumulate_reference

ROOT = Path(__file__).resolve().parent


def timeit(
    fn: Callable[[], object], device: torch.device, repeat: int = 5, warmup: int = 1
) -> dict[str, float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**20


def gemm_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    t = timeit(lambda: a @ b, device, repeat=5)["median_s"]
    return 2 * size**3 / t


def mlp(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def gram_flops(widths: list[int], n: int, k: int, compute: str) -> float:
    """Flops of the two Grams per layer (symmetric: half), the part that is pure GEMM."""
    kk = k * k if compute == "full" else k
    total = 0.0
    for d_in, d_out in itertools.pairwise(widths):
        total += n * n * d_in + n * n * kk * d_out  # 2 flops × n²/2 pairs
    return total


def case_gram(device, dtype, rows, n, d, p, k, compute):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=gen, dtype=dtype).to(device)
    g = torch.randn(n, k, p, generator=gen, dtype=dtype).to(device)
    shape = {"full": (n, n, k, k), "trace": (n, n)}[compute]
    out = torch.zeros(shape, dtype=dtype, device=device)
    fused = timeit(lambda: gram_accumulate(out, a, g, compute=compute, check_finite=False), device)
    unfused = timeit(lambda: gram_accumulate_reference(out, a, g, compute=compute), device)
    name = f"gram {compute} n={n} d={d} p={p} k={k} {str(dtype)[6:]}"
    flops = n * n * d + n * n * (k * k if compute == "full" else k) * p  # symmetric half ×2
    rows.append(
        {
            "case": name,
            "impl": "lplr fused kernel",
            **fused,
            "ratio_to_ours": 1.0,
            "gflops": flops / fused["median_s"] / 1e9,
        }
    )
    rows.append(
        {
            "case": name,
            "impl": "torch (A@Aᵀ+β)⊙(G@Gᵀ)",
            **unfused,
            "ratio_to_ours": unfused["median_s"] / fused["median_s"],
        }
    )


def case_mlp(device, dtype, rows, widths, n, compute, ref_n, gemm):
    torch.manual_seed(0)
    model = mlp(widths).to(device=device, dtype=dtype).eval()
    x = torch.randn(n, widths[0], device=device, dtype=dtype)
    k = widths[-1]
    ours = timeit(lambda: lplr_fast.empirical_ntk(model, x, compute=compute), device, repeat=3)
    mem = peak_memory(lambda: lplr_fast.empirical_ntk(model, x, compute=compute), device)
    name = f"MLP {'→'.join(map(str, widths))} n={n} {compute} {str(dtype)[6:]}"
    rate = gram_flops(widths, n, k, compute) / ours["median_s"]
    rows.append(
        {
            "case": name,
            "impl": "lplr structured",
            **ours,
            "ratio_to_ours": 1.0,
            "peak_mib": mem,
            "gflops": rate / 1e9,
            "gemm_share": rate / gemm,
        }
    )
    # torch.func Jacobian contraction holds n·k·P floats per side: run it on ref_n samples
    xr = x[:ref_n]
    ours_small = timeit(
        lambda: lplr_fast.empirical_ntk(model, xr, compute=compute), device, repeat=3
    )
    jac = timeit(
        lambda: lplr_fast.empirical_ntk(model, xr, compute=compute, implementation="jacobian"),
        device,
        repeat=1,
    )
    small = f"MLP {'→'.join(map(str, widths))} n={ref_n} {compute} {str(dtype)[6:]}"
    rows.append({"case": small, "impl": "lplr structured", **ours_small, "ratio_to_ours": 1.0})
    rows.append(
        {
            "case": small,
            "impl": "torch.func jacobian (vmap(jacrev)+einsum)",
            **jac,
            "ratio_to_ours": jac["median_s"] / ours_small["median_s"],
        }
    )


def ntk_matrix(device: torch.device, n: int, k: int) -> torch.Tensor:
    """A real NTK (MLP 16→256→256→k, float64) as an (n·k) × (n·k) matrix."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, k)
    ).to(device, torch.float64)
    x = torch.randn(n, 16, device=device, dtype=torch.float64)
    return lplr_fast.spectrum.as_matrix(lplr_fast.empirical_ntk(model, x))


def scipy_eigsh_max(a: torch.Tensor) -> float:
    from scipy.sparse.linalg import eigsh

    return float(eigsh(a.cpu().numpy(), k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])


def case_eig(device, rows, n, k):
    a = ntk_matrix(device, n, k)
    size = a.shape[0]
    repeat = 3 if size <= 4096 else 1
    plain = timeit(lambda: torch.linalg.eigvalsh(a), device, repeat=repeat)
    cert = timeit(lambda: lplr_fast.eig_bounds(a), device, repeat=repeat)
    bounds = lplr_fast.eig_bounds(a)
    name = f"eig NTK n·k={size} (n={n}, k={k}) float64"
    rows.append(
        {
            "case": name,
            "impl": f"lplr certified bracket ({bounds.method}, both ends)",
            **cert,
            "ratio_to_ours": 1.0,
            "note": f"λ_min ∈ [{bounds.lambda_min_lower:.6g}, {bounds.lambda_min_upper:.6g}]",
        }
    )
    rows.append(
        {
            "case": name,
            "impl": "torch.linalg.eigvalsh (uncertified)",
            **plain,
            "ratio_to_ours": plain["median_s"] / cert["median_s"],
        }
    )
    lz_bounds = lplr_fast.eig_bounds(a, method="lanczos", which=("max",))
    lz = timeit(lambda: lplr_fast.eig_bounds(a, method="lanczos", which=("max",)), device)
    lanczos_name = f"eig NTK n·k={size} λ_max only"
    rows.append(
        {
            "case": lanczos_name,
            "impl": f"lplr lanczos λ_max ({lz_bounds.matvecs} matvecs)",
            **lz,
            "ratio_to_ours": 1.0,
        }
    )
    lob = timeit(lambda: torch.lobpcg(a, k=1, largest=True, tol=1e-6), device)
    rows.append(
        {
            "case": lanczos_name,
            "impl": "torch.lobpcg λ_max",
            **lob,
            "ratio_to_ours": lob["median_s"] / lz["median_s"],
        }
    )
    try:
        sp = timeit(lambda: scipy_eigsh_max(a), device)
    except ImportError:
        return
    rows.append(
        {
            "case": lanczos_name,
            "impl": "scipy.sparse.linalg.eigsh λ_max (ARPACK)",
            **sp,
            "ratio_to_ours": sp["median_s"] / lz["median_s"],
        }
    )


def write(rows: list[dict], meta: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Benchmark results ({meta['device_name']})",
        "",
        f"Date {meta['date']}; torch {meta['torch']}; {meta['machine']}; measured GEMM rate "
        f"{meta['gemm_gflops']:.1f} GFLOP/s ({meta['gemm_dtype']}). Ratio = time / time of "
        "the first row of the same case (> 1: slower than ours).",
        "",
        "| case | implementation | median ms | min–max ms | ratio | GFLOP/s | GEMM share |"
        " peak MiB | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gflops = f"{r['gflops']:.1f}" if r.get("gflops") else ""
        share = f"{100 * r['gemm_share']:.0f}%" if r.get("gemm_share") else ""
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") else ""
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['median_s'] * 1e3:.2f} | "
            f"{r['min_s'] * 1e3:.2f}–{r['max_s'] * 1e3:.2f} | {r['ratio_to_ours']:.2f} | "
            f"{gflops} | {share} | {peak} | {r.get('note', '')} |"
        )
    name = f"RESULTS_{meta['device']}.md"  # RESULTS.md is the curated summary
    (out_dir / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def group_gram(device, rows, quick, gemm) -> None:
    n_gram = 1024 if quick else (2048 if device.type == "cpu" else 8192)
    for dtype in (torch.float32, torch.float64):
        case_gram(device, dtype, rows, n_gram, 1024, 1024, 1, "full")
        case_gram(device, dtype, rows, n_gram // 4, 512, 512, 10, "full")
        case_gram(device, dtype, rows, n_gram, 512, 512, 10, "trace")


def group_mlp(device, rows, quick, gemm) -> None:
    widths = [784, 2048, 2048, 2048, 10]
    n_mlp = 128 if quick else 512
    for compute in ("full", "trace"):
        case_mlp(
            device, torch.float32, rows, widths, n_mlp, compute, ref_n=8 if quick else 16, gemm=gemm
        )


def group_eig(device, rows, quick, gemm) -> None:
    for n, k in ((512, 2),) if quick else ((512, 2), (1024, 4), (2048, 4)):
        case_eig(device, rows, n, k)


GROUPS: dict[str, Callable[..., None]] = {
    "gram": group_gram,
    "mlp": group_mlp,
    "eig": group_eig,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smaller cases")
    parser.add_argument("--out", type=Path, default=ROOT)
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated case groups out of {','.join(GROUPS)} (default: all)",
    )
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown case groups {sorted(unknown)}; choose from {list(GROUPS)}")
    device = torch.device(args.device)
    gemm = gemm_rate(device, torch.float32, 2048 if device.type == "cpu" else 8192)
    rows: list[dict] = []
    for group in groups:
        GROUPS[group](device, rows, args.quick, gemm)
    meta = {
        "date": str(date.today()),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads",
        "machine": platform.platform(),
        "gemm_gflops": gemm / 1e9,
        "gemm_dtype": "float32",
        "backend": lplr_fast.backend_info(),
    }
    write(rows, meta, args.out)


if __name__ == "__main__":
    main()
