"""Figures of a study as PNG bytes (matplotlib, Agg backend): per run and across runs.

Per run (:func:`run_panels`, one 2×2 figure):
* suboptimality L_t − L* (log) with the predicted envelope (L₀ − L*)(1 − η·μ)^t, μ the
  minimum certified λ_min(Θ_t) on the PL scale (drawn only when it is certified and > 0);
* the PL ratio ‖∇L‖²/(2(L − L*)) with the band [λ_min lower, λ_max upper] of Θ_t at NTK steps
  (certified when the run's bounds are; the ratio must lie inside for squared loss);
* parameter drift ‖θ_t − θ₀‖ and relative NTK drift ‖Θ_t − Θ₀‖₂/‖Θ₀‖₂;
* the spectrum over training: the λ_min and λ_max brackets, with 2/η (the GD stability edge).

Across runs: overlaid suboptimality curves, final drift against width, and the width-scaling
log-log plot with the fitted power law and its 95% band.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from ..training import RunResult
from .fields import bounds_certify_pl, certificate_fields


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _pairs(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _suboptimality(ax, run: RunResult) -> None:
    steps = run.column("step")
    l_star = float(run.config.get("l_star", 0.0))
    t, sub = _pairs(steps, [v - l_star for v in run.column("loss")])
    ax.semilogy(t, [max(v, 1e-300) for v in sub], label="L − L*")
    mu = certificate_fields(run)["pl_cert_min"]
    lr = float(run.config.get("lr", math.nan))
    if t and math.isfinite(mu) and mu > 0 and math.isfinite(lr) and lr * mu < 1:
        label = f"(L₀ − L*)(1 − η·μ)^t, μ = {mu:.3g} (certified)"
        beta0 = next((v for v in run.column("lambda_max_upper") if math.isfinite(v)), math.nan)
        if math.isfinite(beta0) and lr * beta0 > 1:
            label += f"\nneeds η ≤ 1/β; here η·β₀ = {lr * beta0:.3g}"
        ax.semilogy(t, [sub[0] * (1 - lr * mu) ** (s - t[0]) for s in t], "--", label=label)
    ax.set(xlabel="step", ylabel="suboptimality", title="Suboptimality and predicted envelope")
    ax.legend(fontsize=7)


def _pl_band(ax, run: RunResult) -> None:
    steps = run.column("step")
    t, pl = _pairs(steps, run.column("pl_ratio"))
    ax.plot(t, pl, lw=1, label="PL ratio ‖∇L‖²/(2(L − L*))")
    tl, lo = _pairs(steps, run.column("lambda_min_lower"))
    th, hi = _pairs(steps, run.column("lambda_max_upper"))
    if tl and tl == th:
        tag = "certified" if bounds_certify_pl(run) else "not a bracket of the PL ratio"
        ax.fill_between(tl, lo, hi, alpha=0.2, step="mid", label=f"[λ_min, λ_max](Θ_t) ({tag})")
        ax.plot(tl, [max(v, 1e-300) for v in lo], "o", ms=3, label="λ_min lower bound")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="PL scale", title="PL ratio and NTK band")
    ax.legend(fontsize=7)


def _drift(ax, run: RunResult) -> None:
    steps = run.column("step")
    t, d = _pairs(steps, run.column("param_drift"))
    ax.plot(t, d, color="C0", label="‖θ_t − θ₀‖")
    ax.set(xlabel="step", ylabel="parameter drift", title="Parameter and NTK drift")
    twin = ax.twinx()
    tn, dn = _pairs(steps, run.column("ntk_drift_op"))
    _, hi = _pairs(steps, run.column("lambda_max_upper"))
    if tn and hi and hi[0] > 0:
        twin.plot(tn, [v / hi[0] for v in dn], "s--", ms=3, color="C1", label="‖Θ_t − Θ₀‖₂/‖Θ₀‖₂")
    twin.set_ylabel("relative NTK drift")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")


def _spectrum(ax, run: RunResult) -> None:
    steps = run.column("step")
    for lo, hi, color, name in (
        ("lambda_min_lower", "lambda_min_upper", "C2", "λ_min"),
        ("lambda_max_lower", "lambda_max_upper", "C3", "λ_max"),
    ):
        t, a = _pairs(steps, run.column(lo))
        _, b = _pairs(steps, run.column(hi))
        if t and len(a) == len(b):
            ax.plot(
                t, [max(v, 1e-300) for v in b], "o-", ms=3, color=color, label=f"{name} (Θ_t)/n"
            )
            ax.fill_between(t, [max(v, 1e-300) for v in a], b, color=color, alpha=0.25)
    lr = float(run.config.get("lr", math.nan))
    if math.isfinite(lr) and lr > 0:
        ax.axhline(2 / lr, color="k", ls=":", lw=1, label="2/η (GD stability edge)")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="PL scale", title="NTK spectrum over training")
    ax.legend(fontsize=7)


def run_panels(run: RunResult, title: str) -> bytes:
    """The four per-run figures of the module docstring as one PNG."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    _suboptimality(axes[0, 0], run)
    _pl_band(axes[0, 1], run)
    _drift(axes[1, 0], run)
    _spectrum(axes[1, 1], run)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def overlay_suboptimality(runs: list[tuple[str, RunResult]]) -> bytes:
    """Suboptimality curves of several runs on one log plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run in runs:
        l_star = float(run.config.get("l_star", 0.0))
        t, sub = _pairs(run.column("step"), [v - l_star for v in run.column("loss")])
        ax.semilogy(t, [max(v, 1e-300) for v in sub], lw=1, label=label)
    ax.set(xlabel="step", ylabel="L − L*", title="Suboptimality, all runs")
    ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def ablation_figure(rows: list[dict[str, Any]]) -> bytes:
    """Final parameter drift and η·β₀ against width, one line per step size."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        sel = sorted((r for r in rows if r["lr"] == lr), key=lambda r: r["width"])
        w, d = _pairs([r["width"] for r in sel], [r["final_param_drift"] for r in sel])
        ax1.loglog(w, d, "o-", label=f"lr {lr:.3g}")
        w, s = _pairs([r["width"] for r in sel], [r["lr_beta0"] for r in sel])
        ax2.loglog(w, s, "o-", label=f"lr {lr:.3g}")
    ax1.set(xlabel="width", ylabel="final ‖θ_T − θ₀‖", title="Final parameter drift")
    ax2.axhline(2.0, color="k", ls=":", lw=1, label="η·β₀ = 2")
    ax2.set(xlabel="width", ylabel="η·β₀", title="Step relative to the stability edge at init")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _png(fig)


def scaling_figure(rows: list[dict[str, Any]], analysis: dict[str, Any]) -> bytes:
    """Relative NTK drift and parameter drift against width (log-log), every seed, with the
    fitted power law, its 95% band, and the lazy-training slope −1/2 for reference."""
    import numpy as np

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    done = [r for r in rows if str(r.get("status", "")).startswith("completed")]
    for ax, name, fit_key, ylabel in (
        (ax1, "ntk_rel_drift_final", "ntk_drift_fit", "‖Θ_T − Θ₀‖₂/‖Θ₀‖₂"),
        (ax2, "final_param_drift", "param_drift_fit", "‖θ_T − θ₀‖"),
    ):
        w, v = _pairs([float(r["width"]) for r in done], [r[name] for r in done])
        ax.loglog(w, v, "o", ms=4, alpha=0.7, label="runs (all seeds)")
        fit = analysis.get(fit_key, {})
        if w and math.isfinite(fit.get("exponent", math.nan)):
            grid = np.geomspace(min(w), max(w), 50)
            p, a = fit["exponent"], fit["intercept"]
            ax.loglog(grid, np.exp(a) * grid**p, "-", label=f"fit: p = {p:.3f}")
            lo, hi = fit["ci95"]
            mid = math.exp(np.mean(np.log(w)))
            for q in (lo, hi):
                ax.loglog(grid, np.exp(a) * mid**p * (grid / mid) ** q, ":", color="C1", lw=1)
            if name == "ntk_rel_drift_final":
                ax.loglog(
                    grid,
                    np.exp(a) * mid**p * (grid / mid) ** -0.5,
                    "--",
                    color="gray",
                    lw=1,
                    label="slope −1/2 (lazy training)",
                )
        ax.set(xlabel="width", ylabel=ylabel)
        ax.legend(fontsize=7)
    ax1.set_title("Relative NTK drift vs width (95% slope band dotted)")
    ax2.set_title("Parameter drift vs width")
    return _png(fig)
