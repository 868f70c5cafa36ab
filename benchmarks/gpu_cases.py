"""GPU benchmark cases (the targets of the GPU issue), one group of benchmarks/run.py:

* Gram accumulation: the GEMM route, the fused kernel and plain torch
  (A@Aᵀ+β)⊙(G@Gᵀ) on every shape, with GFLOP/s (symmetric: the useful half counted);
* MLP 784→2048³→10, n = 4096, full and trace: share of the float32 GEMM rate measured in the
  same run, peak memory; torch.func references at small n (and their n² extrapolation);
* MLP width 8192, n = 8192, trace: GEMM share, peak memory against output + activations;
* batched against sequential cotangent passes;
* ResNet-style CNN 3×32×32, k = 10, n = 1024 against both torch.func methods;
* certified λ_min/λ_max bracket against float64 ``eigvalsh`` at n·k = 8192 and 16384.

Each case is guarded: an out-of-memory or other failure becomes a row with a note.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable

import torch

import lplr_fast
from lplr_fast.gram import gram_accumulate
from lplr_fast.ntk.capture import Capture, forward_with_cotangents, parametrised_modules

from . import baselines
from .models import ResNetCNN
from .models import mlp as bench_mlp

MLP_WIDTHS = [784, 2048, 2048, 2048, 10]
DEV = torch.device("cuda")  # set by group_gpu; "cpu" only for a smoke test of this module


def _run(rows: list[dict], case: str, body: Callable[[], None]) -> None:
    print(f"[gpu] {case} ...", flush=True)
    try:
        body()
        _save_partial(rows)
    except Exception as err:  # one failing case must not stop the others
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(
            {"case": case, "impl": "-", "note": f"failed: {type(err).__name__}: {err}"[:300]}
        )
        traceback.print_exc()


def _save_partial(rows: list[dict]) -> None:
    """Rows so far to $LPLR_BENCH_PARTIAL (a run cut short still leaves its numbers)."""
    path = os.environ.get("LPLR_BENCH_PARTIAL")
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)


def _time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> dict[str, float]:
    from .run import timeit

    return timeit(fn, DEV, repeat=repeat, warmup=warmup)


def _peak_mib(fn: Callable[[], object]) -> float | None:
    if DEV.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _smoke() -> bool:
    return DEV.type != "cuda"


def gram_cases(rows: list[dict], quick: bool) -> None:
    big = 2048 if quick else 8192
    shapes = [
        ("full", big, 1024, 1024, 1),
        ("full", big // 4, 512, 512, 10),
        ("trace", big, 512, 512, 10),
        ("diagonal", big // 4, 512, 512, 10),
        ("full", 64, 256, 256, 10),
        ("full", 256, 784, 2048, 10),
    ]
    if _smoke():
        shapes = [(c, 40, 16, 16, k) for c, _, _, _, k in shapes]
    for dtype in (torch.float32, torch.float64):
        for compute, n, d, p, k in shapes:
            name = f"gram {compute} n={n} d={d} p={p} k={k} {str(dtype)[6:]}"
            _run(rows, name, lambda a=(compute, n, d, p, k, dtype, name): _gram_case(rows, *a))


def _gram_case(rows, compute, n, d, p, k, dtype, name) -> None:
    gen = torch.Generator(device=DEV).manual_seed(0)
    a = torch.randn(n, d, generator=gen, dtype=dtype, device=DEV)
    g = torch.randn(n, k, p, generator=gen, dtype=dtype, device=DEV)
    shape = {"full": (n, n, k, k), "trace": (n, n), "diagonal": (n, n, k)}[compute]
    out = torch.zeros(shape, dtype=dtype, device=DEV)
    kk = {"full": k * k, "trace": k, "diagonal": k}[compute]
    flops = n * n * d + n * n * kk * p  # 2 flops × the n²/2 distinct pairs

    def plain() -> None:  # what a user writes: both Grams in full, then the product
        w = a @ a.T + 1.0
        if compute == "full":
            gg = (g.reshape(n * k, p) @ g.reshape(n * k, p).T).view(n, k, n, k)
            out.add_(w[:, :, None, None] * gg.permute(0, 2, 1, 3))
        elif compute == "trace":
            out.add_(w * (g.reshape(n, k * p) @ g.reshape(n, k * p).T))
        else:
            out.add_(
                w[:, :, None] * torch.bmm(g.transpose(0, 1), g.permute(1, 2, 0)).permute(1, 2, 0)
            )

    base = _time(plain)
    for route in ("gemm", "fused", "auto"):
        t = _time(
            lambda r=route: gram_accumulate(out, a, g, compute=compute, check_finite=False, route=r)
        )
        rows.append(
            {"case": name, "impl": f"lplr route={route}", **t,
             "ratio_to_ours": 1.0, "gflops": flops / t["median_s"] / 1e9,
             "note": f"{base['median_s'] / t['median_s']:.2f}× plain torch"}
        )  # fmt: skip
    rows.append(
        {"case": name, "impl": "plain torch (A@Aᵀ+β)⊙(G@Gᵀ), full squares", **base,
         "ratio_to_ours": 1.0, "gflops": flops / base["median_s"] / 1e9}
    )  # fmt: skip


def _mlp_flops(widths: list[int], n: int, compute: str) -> tuple[float, float]:
    from .run import gram_flops, pass_flops

    k = widths[-1]
    return gram_flops(widths, n, k, compute), pass_flops(widths, n, k)


def mlp_case(rows, widths, n, compute, gemm, repeat=3) -> None:
    torch.manual_seed(0)
    model = bench_mlp(widths).to(DEV).eval()
    x = torch.randn(n, widths[0], device=DEV)
    name = f"MLP {'→'.join(map(str, widths))} n={n} {compute} float32"

    def ours() -> torch.Tensor:
        return lplr_fast.empirical_ntk(model, x, compute=compute)

    t = _time(ours, repeat=repeat)
    peak = _peak_mib(ours)
    grams, passes = _mlp_flops(widths, n, compute)
    rate = (grams + passes) / t["median_s"]
    out_mib = n * n * (widths[-1] ** 2 if compute == "full" else 1) * 4 / 2**20
    act_mib = n * sum(widths) * 4 / 2**20
    memory = (
        ""
        if peak is None
        else f"; peak/(output {out_mib:.0f} MiB + activations {act_mib:.0f} MiB) = "
        f"{peak / (out_mib + act_mib):.2f}"
    )
    rows.append(
        {"case": name, "impl": "lplr structured", **t, "ratio_to_ours": 1.0,
         "gflops": rate / 1e9, "gemm_share": rate / gemm, "peak_mib": peak,
         "note": f"Grams alone {grams / t['median_s'] / gemm:.0%} of GEMM{memory}"}
    )  # fmt: skip


def reference_cases(rows, widths, n_small: list[int], compute: str, n_big: int) -> None:
    """Ours against the torch.func recipes at small n; the NTK-VP time extrapolated ∝ n²
    (its cost is one VJP + JVP per sample pair and output) to n_big."""
    torch.manual_seed(0)
    model = bench_mlp(widths).to(DEV).eval()
    vp_times = []
    for n in n_small:
        x = torch.randn(n, widths[0], device=DEV)
        name = f"MLP {'→'.join(map(str, widths))} n={n} {compute} float32"
        ours = _time(lambda x=x: lplr_fast.empirical_ntk(model, x, compute=compute), repeat=5)
        rows.append({"case": name, "impl": "lplr structured", **ours, "ratio_to_ours": 1.0})
        jac = _time(lambda x=x: baselines.jacobian_contraction(model, x, x, compute), repeat=2)
        rows.append({"case": name, "impl": "torch.func Jacobian contraction (tutorial)", **jac,
                     "ratio_to_ours": jac["median_s"] / ours["median_s"]})  # fmt: skip
        vp = _time(lambda x=x: baselines.ntk_vector_products(model, x, x, compute), repeat=1)
        vp_times.append((n, vp["median_s"]))
        rows.append({"case": name, "impl": "torch.func NTK-vector products (tutorial)", **vp,
                     "ratio_to_ours": vp["median_s"] / ours["median_s"]})  # fmt: skip
    n_last, t_last = vp_times[-1]
    rows.append(
        {"case": f"MLP n={n_big} {compute}: NTK-VP extrapolated",
         "impl": "torch.func NTK-vector products", "extrapolated_s": t_last * (n_big / n_last) ** 2,
         "note": f"≈ {t_last * (n_big / n_last) ** 2:.0f} s = {t_last:.3f} s at n={n_last} "
                 f"× (n/{n_last})²"}
    )  # fmt: skip


def cotangent_case(rows, widths, n) -> None:
    torch.manual_seed(0)
    model = bench_mlp(widths).to(DEV).eval()
    x = torch.randn(n, widths[0], device=DEV)
    capture = Capture(parametrised_modules(model))
    name = f"cotangents MLP {'→'.join(map(str, widths))} n={n}"
    times = {}
    for batched in (True, False):
        times[batched] = _time(
            lambda b=batched: forward_with_cotangents(model, x, capture, batched=b), repeat=5
        )
    rows.append({"case": name, "impl": "batched backward over outputs", **times[True],
                 "ratio_to_ours": 1.0})  # fmt: skip
    rows.append({"case": name, "impl": "k sequential backward passes", **times[False],
                 "ratio_to_ours": times[False]["median_s"] / times[True]["median_s"]})  # fmt: skip


def cnn_case(rows, n, n_vp) -> None:
    torch.manual_seed(0)
    cnn = ResNetCNN().to(DEV).eval()
    x = torch.randn(n, 3, 32, 32, device=DEV)
    name = f"ResNet-style CNN 3×32×32 n={n} k=10 full float32"
    ours = _time(lambda: lplr_fast.empirical_ntk(cnn, x), repeat=3)
    rows.append({"case": name, "impl": "lplr structured", **ours, "ratio_to_ours": 1.0,
                 "peak_mib": _peak_mib(lambda: lplr_fast.empirical_ntk(cnn, x))})  # fmt: skip

    def jacobian() -> None:
        for s in range(0, n, 256):
            for t in range(0, n, 256):
                baselines.jacobian_contraction(cnn, x[s : s + 256], x[t : t + 256])
        if DEV.type == "cuda":
            torch.cuda.synchronize()

    jac = _time(jacobian, repeat=1)
    rows.append({"case": name, "impl": "torch.func Jacobian contraction (256-sample blocks)",
                 **jac, "ratio_to_ours": jac["median_s"] / ours["median_s"]})  # fmt: skip
    xs = x[:n_vp]
    vp = _time(lambda: baselines.ntk_vector_products(cnn, xs, xs, chunk=8), repeat=1)
    rows.append({"case": name, "impl": f"torch.func NTK-vector products, n={n_vp} × (n/{n_vp})²",
                 "extrapolated_s": vp["median_s"] * (n / n_vp) ** 2,
                 "ratio_to_ours": vp["median_s"] * (n / n_vp) ** 2 / ours["median_s"],
                 "note": f"≈ {vp['median_s'] * (n / n_vp) ** 2:.1f} s extrapolated"})  # fmt: skip


def eig_case(rows, n, k) -> None:
    from .run import ntk_matrix

    a = ntk_matrix(DEV, n, k)
    name = f"eig NTK n·k={a.shape[0]} (n={n}, k={k}) float64, GPU"
    plain = _time(lambda: torch.linalg.eigvalsh(a), repeat=3)
    cert = _time(lambda: lplr_fast.eig_bounds(a), repeat=3)
    b = lplr_fast.eig_bounds(a)
    ev = torch.linalg.eigvalsh(a)
    lo, hi = float(ev[0]), float(ev[-1])
    inside = (
        b.lambda_min_lower <= lo <= b.lambda_min_upper
        and b.lambda_max_lower <= hi <= b.lambda_max_upper
    )
    rows.append({"case": name, "impl": f"lplr certified bracket ({b.method})", **cert,
                 "ratio_to_ours": 1.0,
                 "note": f"λ_min ∈ [{b.lambda_min_lower:.6g}, {b.lambda_min_upper:.6g}], "
                         f"eigvalsh {lo:.6g}; brackets hold eigvalsh: {inside}; "
                         f"{cert['median_s'] / plain['median_s']:.2f}× eigvalsh time"})  # fmt: skip
    rows.append({"case": name, "impl": "torch.linalg.eigvalsh float64 (uncertified)", **plain,
                 "ratio_to_ours": plain["median_s"] / cert["median_s"]})  # fmt: skip


def group_gpu(device: torch.device, rows: list[dict], quick: bool, gemm: float) -> None:
    """All GPU cases (nothing on CPU, unless LPLR_BENCH_SMOKE=1 with --quick: a smoke test
    of this module at tiny sizes)."""
    global DEV
    if device.type != "cuda" and not (quick and os.environ.get("LPLR_BENCH_SMOKE") == "1"):
        return
    DEV = device
    gram_cases(rows, quick)
    smoke = _smoke()
    widths = [32, 64, 64, 10] if smoke else MLP_WIDTHS
    big = 64 if smoke else (1024 if quick else 4096)
    for compute in ("full", "trace"):
        _run(rows, f"mlp {compute}", lambda c=compute: mlp_case(rows, widths, big, c, gemm))
    sizes = ((64, 2),) if smoke else (((512, 4),) if quick else ((2048, 4), (4096, 4)))
    for n, k in sizes:
        _run(rows, f"eig {n}x{k}", lambda n=n, k=k: eig_case(rows, n, k))
    wide = [32, 128, 128, 10] if smoke else [784, 8192, 8192, 8192, 10]
    n_wide = 64 if smoke else (2048 if quick else 8192)
    _run(rows, "wide trace", lambda: mlp_case(rows, wide, n_wide, "trace", gemm, 2))
    small = [4, 8] if smoke else [16, 32]
    _run(rows, "references", lambda: reference_cases(rows, widths, small, "full", big))
    _run(rows, "cotangents", lambda: cotangent_case(rows, widths, 32 if smoke else 512))
    _run(rows, "cnn", lambda: cnn_case(rows, 16 if smoke else 1024, 4 if smoke else 16))


__all__ = ["group_gpu"]
