"""Benchmark script: times a fixed set of cases, writes benchmarks/RESULTS.md and results.json.

    python3 -m benchmarks.run [--device cuda] [--quick] [--out DIR]

Every ratio compares implementations measured in the same process on the same device.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lplr_fast
from lplr_fast.gram import gram_accumulate, gram_accumulate_reference

from .distributed_cases import group_distributed
from .gpu_cases import group_gpu
from .models import LSTMModel, ResNetCNN, TransformerClassifier, export
from .models import mlp as bench_mlp

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


def gram_flops(widths: list[int], n: int, k: int, compute: str) -> float:
    """Flops of the two Grams per layer (symmetric: half), the part that is pure GEMM."""
    kk = k * k if compute == "full" else k
    total = 0.0
    for d_in, d_out in itertools.pairwise(widths):
        total += n * n * d_in + n * n * kk * d_out  # 2 flops × n²/2 pairs
    return total


def pass_flops(widths: list[int], n: int, k: int) -> float:
    """Flops of the forward pass and the k backward passes that produce the cotangents of
    every layer's output (no gradient with respect to the input itself is needed)."""
    layers = list(itertools.pairwise(widths))
    forward = sum(2 * n * a * b for a, b in layers)
    backward = sum(2 * n * a * b for a, b in layers[1:])
    return forward + k * backward


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
    model = bench_mlp(widths).to(device=device, dtype=dtype).eval()
    x = torch.randn(n, widths[0], device=device, dtype=dtype)
    k = widths[-1]
    ours = timeit(lambda: lplr_fast.empirical_ntk(model, x, compute=compute), device, repeat=3)
    mem = peak_memory(lambda: lplr_fast.empirical_ntk(model, x, compute=compute), device)
    name = f"MLP {'→'.join(map(str, widths))} n={n} {compute} {str(dtype)[6:]}"
    grams = gram_flops(widths, n, k, compute)
    rate = (grams + pass_flops(widths, n, k)) / ours["median_s"]
    rows.append(
        {
            "case": name,
            "impl": "lplr structured",
            **ours,
            "ratio_to_ours": 1.0,
            "peak_mib": mem,
            "gflops": rate / 1e9,
            "gemm_share": rate / gemm,
            "note": "GFLOP/s counts the forward pass, the k cotangent backward passes and the "
            f"Grams; the Grams alone run at {grams / ours['median_s'] / gemm:.0%} of GEMM",
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
        if "median_s" in r:
            timing = (
                f"{r['median_s'] * 1e3:.2f} | {r['min_s'] * 1e3:.2f}–{r['max_s'] * 1e3:.2f} | "
                f"{r['ratio_to_ours']:.2f}"
            )
        else:
            timing = " |  | "
        lines.append(
            f"| {r['case']} | {r['impl']} | {timing} | {gflops} | {share} | {peak} | "
            f"{r.get('note', '')} |"
        )
    name = f"RESULTS_{meta['device']}.md"  # RESULTS.md is the curated summary
    (out_dir / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


NT_PYTHON_DEFAULT = ROOT.parent / ".venv-nt" / "bin" / "python"
NT_IMPLS = {1: "Jacobian contraction", 2: "NTK-vector products", 3: "structured derivatives"}


def nt_python() -> Path | None:
    """The neural-tangents environment's interpreter ($LPLR_NT_PYTHON or .venv-nt)."""
    path = Path(os.environ.get("LPLR_NT_PYTHON", NT_PYTHON_DEFAULT))
    return path if path.is_file() else None


def subprocess_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a probe; its last stdout line is JSON. Failures come back as {"error": why}."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT.parent, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        if done.returncode == -11:
            return {"error": "crashed with a segmentation fault (SIGSEGV)"}
        text = (done.stderr + done.stdout).splitlines()
        errors = [ln for ln in text if "Error" in ln or "error" in ln] or text[-1:] or ["?"]
        return {"error": f"exit {done.returncode}: {errors[-1].strip()[:160]}"}
    return json.loads(lines[-1])


def ours_probe(case: Path, trace: bool, repeat: int, save: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.probe", str(case), "--repeat", str(repeat)]
    cmd += ["--trace"] if trace else []
    cmd += ["--save", str(save)] if save else []
    return subprocess_json(cmd, timeout=1800)


def nt_probe(
    case: Path, impl: int, trace: bool, repeat: int, timeout: float, save: Path | None = None,
    build: str = "jax",
) -> dict[str, Any]:  # fmt: skip
    python = nt_python()
    if python is None:
        return {"error": "neural-tangents env missing (bash benchmarks/setup_neural_tangents.sh)"}
    cmd = [str(python), str(ROOT / "nt_baseline.py"), str(case), "--impl", str(impl)]
    cmd += ["--repeat", str(repeat)] + (["--trace"] if trace else [])
    cmd += ["--save", str(save)] if save else []
    cmd += ["--build", build]
    return subprocess_json(cmd, timeout=timeout)


def framework_rows(
    rows: list[dict], name: str, case: Path, trace: bool, impls: dict[int, str | None],
    repeat: int, timeout: float, activations_mib: float, build: str = "jax",
) -> dict[str, Any]:  # fmt: skip
    """Ours (probe) and neural-tangents (each implementation, or the reason it is skipped),
    both in fresh processes; the structured NT kernel is checked against ours. ``build``:
    the network as a plain JAX function ("jax") or as a stax network ("stax", MLPs)."""
    with tempfile.TemporaryDirectory() as tmp:
        ours_k, nt_k = Path(tmp) / "ours.npy", Path(tmp) / "nt.npy"
        ours = ours_probe(case, trace, repeat, save=ours_k)
        if "error" in ours:
            rows.append({"case": name, "impl": "lplr structured", "note": ours["error"]})
            return ours
        budget = ours["output_mib"] + activations_mib
        rows.append(
            {
                "case": name,
                "impl": "lplr structured (fresh process)",
                **{k: ours[k] for k in ("median_s", "min_s", "max_s", "peak_mib")},
                "ratio_to_ours": 1.0,
                "note": f"peak/(output+activations) = {ours['peak_mib'] / budget:.2f}; "
                f"first call {ours['first_s']:.2f} s (peak MiB: first call, both sides)",
            }
        )
        for impl, skip in impls.items():
            label = f"neural-tangents {NT_IMPLS[impl]}" + (" (stax)" if build == "stax" else "")
            if skip:
                rows.append({"case": name, "impl": label, "note": f"skipped: {skip}"})
                continue
            nt = nt_probe(
                case, impl, trace, repeat, timeout, save=nt_k if impl == 3 else None, build=build
            )
            if "error" in nt:
                rows.append({"case": name, "impl": label, "note": nt["error"]})
                continue
            note = f"compile+first call {nt['compile_s']:.2f} s"
            if impl == 3 and nt_k.is_file():
                a, b = np.load(ours_k), np.load(nt_k)
                if trace:  # neural-tangents' trace_axes averages over outputs; ours sums
                    a = a / float(ours["k"])
                rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
                note += f"; max |K_ours − K_nt| / max|K| = {rel:.1e}"
            rows.append(
                {
                    "case": name,
                    "impl": label,
                    **{k: nt[k] for k in ("median_s", "min_s", "max_s", "peak_mib")},
                    "ratio_to_ours": nt["median_s"] / ours["median_s"],
                    "note": note,
                }
            )
    return ours


def mlp_case(
    tmp: Path, widths: list[int], n: int, seed: int = 0, act: str = "tanh"
) -> tuple[Path, float]:
    """Exported MLP case and its forward activations in MiB (float32)."""
    torch.manual_seed(seed)
    path = tmp / f"mlp_{act}_{'_'.join(map(str, widths))}_{n}.npz"
    export(bench_mlp(widths, act), torch.randn(n, widths[0]), "mlp", path)
    return path, n * sum(widths) * 4 / 2**20


def group_frameworks(device, rows, quick, gemm) -> None:
    """The MLP case 784→2048³→10 (full, trace) and the ResNet-style CNN at n = 256, k = 10
    against neural-tangents (CPU) and the torch.func Jacobian contraction. neural-tangents
    runs the MLP only at small n on this machine (larger n: XLA segfaults or runs out of
    memory); each size is compared with ours at the same n."""
    if device.type != "cpu":
        return  # neural-tangents is installed for the CPU only
    widths = [784, 2048, 2048, 2048, 10]
    params = sum(a * b + b for a, b in itertools.pairwise(widths))
    sizes = [8, 32] if quick else [8, 32, 512]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n in sizes:
            case, act = mlp_case(tmp, widths, n)
            jac_gib = n * widths[-1] * params * 4 / 2**30
            for trace in (False, True):
                name = f"MLP {'→'.join(map(str, widths))} n={n} {'trace' if trace else 'full'}"
                big = n > 32
                impls = {
                    3: None,
                    2: "n·k VJP+JVP pairs: > 15 min here by n² scaling from n=32" if big else None,
                    1: f"Jacobians need n·k·P·4 B = {jac_gib:.0f} GiB" if big else None,
                }
                framework_rows(rows, name, case, trace, impls, 1, 600, act)
            case.unlink()
        torch.manual_seed(0)
        n_cnn = 64 if quick else 256
        cnn = ResNetCNN()
        x = torch.randn(n_cnn, 3, 32, 32)
        cnn_case = tmp / "cnn.npz"
        export(cnn, x, "resnet", cnn_case)
        act_cnn = n_cnn * (16 * 32 * 32 * 5 + 32 * 16 * 16 * 5) * 4 / 2**20
        name = f"ResNet-style CNN 3×32×32 n={n_cnn} k=10 full"
        ours = framework_rows(rows, name, cnn_case, False, {3: None, 1: None, 2: None},
                              repeat=1, timeout=900, activations_mib=act_cnn)  # fmt: skip

        def jacobian() -> None:
            lplr_fast.empirical_ntk(cnn.eval(), x, implementation="jacobian", block_size=64)

        jac = timeit(jacobian, device, repeat=1, warmup=0)
        if "median_s" in ours:
            rows.append(
                {
                    "case": name,
                    "impl": "torch.func jacobian (vmap(jacrev)+einsum), in this process",
                    **jac,
                    "ratio_to_ours": jac["median_s"] / ours["median_s"],
                }
            )


def group_stax(device, rows, quick, gemm) -> None:
    """neural-tangents as its users write networks: the MLP 784→2048³→10 with Erf built with
    stax (Dense in standard parameterisation, loaded with our weights), against ours on the
    same weights, full kernel, in fresh processes. NT's JAX does not run on the GPU image
    (neural-tangents 0.6.5 needs jax 0.4.x; the image has 0.11): CPU only."""
    if device.type != "cpu":
        return
    widths = [784, 2048, 2048, 2048, 10]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n in [8, 32] if quick else [8, 32, 256]:
            case, act_mib = mlp_case(tmp, widths, n, act="erf")
            name = f"MLP (Erf) {'→'.join(map(str, widths))} n={n} full, stax build"
            impls = {3: None, 2: None if n <= 32 else "n·k VJP+JVP pairs: minutes by n² scaling"}
            framework_rows(rows, name, case, False, impls, 1, 600, act_mib, build="stax")
            case.unlink()


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def group_sweep(device, rows, quick, gemm) -> None:
    """Width sweep at n = 128 (full) and n sweep at width 512 (trace): time and peak memory
    of ours in fresh processes, fitted exponents, and neural-tangents' structured
    derivatives at the sizes it finishes in time."""
    if device.type != "cpu":
        return
    widths_sweep = [256, 512, 1024] if quick else [256, 512, 1024, 2048, 4096, 8192]
    ns_sweep = [128, 256, 512] if quick else [128, 256, 512, 1024, 2048, 4096]
    fits: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, sizes, make, trace in (
            ("width", widths_sweep, lambda w: mlp_case(tmp, [784, w, w, 10], 128), False),
            ("n", ns_sweep, lambda n: mlp_case(tmp, [784, 512, 512, 10], n), True),
        ):
            times, peaks = [], []
            for size in sizes:
                case, act = make(size)
                name = (
                    f"sweep width={size} (MLP 784→{size}→{size}→10, n=128, full)"
                    if label == "width"
                    else f"sweep n={size} (MLP 784→512→512→10, trace)"
                )
                nt_skip = None if size <= (2048 if label == "width" else 1024) else "sweep cap"
                ours = framework_rows(rows, name, case, trace, {3: nt_skip}, repeat=1,
                                      timeout=600, activations_mib=act)  # fmt: skip
                if "median_s" in ours:
                    times.append((size, ours["median_s"]))
                    peaks.append((size, max(ours["peak_mib"], 1e-3)))
                case.unlink()
            if len(times) >= 3:  # asymptotic exponents: the three largest sizes
                fits[f"time ∝ {label}^a"] = fit_exponent(*zip(*times[-3:], strict=True))
                fits[f"peak memory ∝ {label}^b"] = fit_exponent(*zip(*peaks[-3:], strict=True))
    rows.append({"case": "fitted scaling exponents", "impl": "lplr structured", "fits": fits,
                 "note": "; ".join(f"{k}: {v:.2f}" for k, v in fits.items())})  # fmt: skip


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


def group_sequence(device, rows, quick, gemm) -> None:
    """Transformer encoder classifier (attention: structured Linear rule for the q/k/v and
    output projections) and an LSTM sequence model (recurrent layers: per-sample gradients
    from their output cotangents), full NTK, against both torch.func references."""
    n = 16 if quick else 64
    torch.manual_seed(0)
    cases = [
        (
            f"Transformer encoder classifier (2 layers, d=128, T=32) n={n} k=10 full",
            TransformerClassifier().to(device).eval(),
            torch.randint(0, 1000, (n, 32), device=device),
        ),
        (
            f"LSTM 2×128 (d=32, T=32) n={n} k=10 full",
            LSTMModel().to(device).eval(),
            torch.randn(n, 32, 32, device=device),
        ),
    ]
    for name, model, x in cases:
        ours = timeit(lambda m=model, x=x: lplr_fast.empirical_ntk(m, x), device, repeat=3)
        rows.append({"case": name, "impl": "lplr structured", **ours, "ratio_to_ours": 1.0})
        for impl in ("jacobian", "ntk_vp"):
            ref = timeit(
                lambda m=model, x=x, impl=impl: lplr_fast.empirical_ntk(m, x, implementation=impl),
                device,
                repeat=1,
            )
            rows.append(
                {
                    "case": name,
                    "impl": f"reference implementation={impl!r}",
                    **ref,
                    "ratio_to_ours": ref["median_s"] / ours["median_s"],
                }
            )


def group_probe(device, rows, quick, gemm) -> None:
    """Cost of the random-probe self-check (verify="probe", the default) on the MLP and CNN
    cases: the same call with verify="off" is the reference; the ratio is the overhead."""
    torch.manual_seed(0)
    widths = [784, 2048, 2048, 2048, 10]
    n_mlp = 128 if quick else 512
    n_cnn = 64 if quick else 256
    mlp_model = bench_mlp(widths).to(device).eval()
    cnn = ResNetCNN().to(device).eval()
    cases = [
        (f"MLP {'→'.join(map(str, widths))} n={n_mlp} full", mlp_model, (n_mlp, 784), "full"),
        (f"MLP {'→'.join(map(str, widths))} n={n_mlp} trace", mlp_model, (n_mlp, 784), "trace"),
        (f"ResNet-style CNN 3×32×32 n={n_cnn} k=10 full", cnn, (n_cnn, 3, 32, 32), "full"),
    ]
    for name, model, shape, compute in cases:
        x = torch.randn(*shape, device=device)
        off = timeit(
            lambda m=model, x=x, c=compute: lplr_fast.empirical_ntk(m, x, compute=c, verify="off"),
            device,
            repeat=3,
        )
        on = timeit(
            lambda m=model, x=x, c=compute: lplr_fast.empirical_ntk(m, x, compute=c), device, 3
        )
        rows.append({"case": name, "impl": "lplr structured, verify='off'", **off,
                     "ratio_to_ours": 1.0})  # fmt: skip
        rows.append(
            {
                "case": name,
                "impl": "lplr structured, verify='probe' (default)",
                **on,
                "ratio_to_ours": on["median_s"] / off["median_s"],
                "note": f"probe overhead {on['median_s'] / off['median_s'] - 1:.1%} (target < 10%)",
            }
        )


GROUPS: dict[str, Callable[..., None]] = {
    "gram": group_gram,
    "mlp": group_mlp,
    "eig": group_eig,
    "frameworks": group_frameworks,
    "sweep": group_sweep,
    "gpu": group_gpu,
    "stax": group_stax,
    "sequence": group_sequence,
    "probe": group_probe,
    "distributed": group_distributed,
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
    parser.add_argument(
        "--merge", action="store_true", help="keep the other groups' rows of OUT/results.json"
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
        start = len(rows)
        GROUPS[group](device, rows, args.quick, gemm)
        for row in rows[start:]:
            row["group"] = group
    previous = args.out / "results.json"
    if args.merge and previous.is_file():  # keep the rows of the groups not rerun
        kept = [r for r in json.loads(previous.read_text())["rows"] if r.get("group") not in groups]
        rows = sorted(kept + rows, key=lambda r: list(GROUPS).index(r.get("group", "gram")))
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
        "gemm_gflops_float64": gemm_rate(
            device, torch.float64, 2048 if device.type == "cpu" else 8192
        )
        / 1e9,
        "backend": lplr_fast.backend_info(),
    }
    write(rows, meta, args.out)


if __name__ == "__main__":
    main()
