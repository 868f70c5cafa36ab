"""``lplr-fast plot RUN_DIR``: PNG figures of a run (matplotlib, Agg backend, no display).

* ``suboptimality.png``: L − L* on a log scale with the envelope (L₀ − L*)·Π(1 − η·μ_s),
  μ_s the certified λ_min lower end of the latest NTK step (see ``analysis.py``); drawn only
  when the summary checked it (certified basis, full-batch GD), otherwise a note says why;
* ``pl_ratio.png``: the PL ratio with the [λ_min, λ_max] band at NTK steps;
* ``drift.png``: parameter drift ‖θ_t − θ_0‖ and NTK drift ‖Θ_t − Θ_0‖ (2-norm, Frobenius);
* ``mu_region_est.png``: the λ_min lower end at each NTK step and the region estimate
  μ̂ = λ_0 − L̂_Θ·r (optimistic), with the zero line.

The λ curves are labelled certified PL constants only when :func:`pl_basis_problem` (the
test behind the summary's ``pl_cert_basis``) finds nothing wrong: certified bounds of the
full kernel on every training sample; otherwise the labels say what they are and why not.
"""

from __future__ import annotations

import math
from pathlib import Path

from .analysis import log_envelope, pl_basis_problem
from .result import RunResult


def _finite_pairs(steps: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(t, v) for t, v in zip(steps, values, strict=True) if math.isfinite(v)]
    return [t for t, _ in pairs], [v for _, v in pairs]


def figure_labels(run: RunResult) -> dict[str, str | None]:
    """The labels that claim (or disclaim) certification, from :func:`pl_basis_problem`:
    ``envelope`` (None: the envelope is not drawn), ``envelope_note`` (why not), ``band``,
    ``lambda_min`` and ``mu_title``."""
    problem = pl_basis_problem(run.summary, run.config)
    held = run.summary.get("envelope_held")
    if problem is None and held is not None:
        state = "held" if held else "violated"
        envelope, note = f"(L₀ − L*)·Π(1 − η·μ_s), μ_s certified ({state})", None
    else:
        envelope = None
        note = run.summary.get("envelope_note") or f"not checked ({problem})"
    if problem is None:
        return {
            "envelope": envelope,
            "envelope_note": note,
            "band": "[λ_min, λ_max] (PL scale; certified)",
            "lambda_min": "certified PL constant at the iterate (λ_min lower end)",
            "mu_title": "PL constant: certified vs region estimate",
        }
    not_pl = f"not a certified PL constant: {problem}"
    return {
        "envelope": envelope,
        "envelope_note": note,
        "band": f"[λ_min, λ_max] of the logged kernel (PL scale; {not_pl})",
        "lambda_min": f"λ_min lower end of the logged kernel ({not_pl})",
        "mu_title": "λ_min of the logged kernel vs region estimate (neither certified)",
    }


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the figures of the run in ``run_dir`` (into ``out_dir``, default the run
    folder); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunResult.load(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = run.column("step")
    l_star = float(run.config.get("l_star", 0.0))
    lr = float(run.config.get("lr", math.nan))
    written: list[Path] = []
    labels = figure_labels(run)

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    sub = [v - l_star for v in run.column("loss")]
    t, s = _finite_pairs(steps, sub)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(t, [max(v, 1e-300) for v in s], label="L − L*")
    logs = log_envelope(run.history, lr) if labels["envelope"] and math.isfinite(lr) else None
    if logs is not None and sub and math.isfinite(sub[0]) and sub[0] > 0:
        envelope = [sub[0] * math.exp(v) for v in logs]
        ax.semilogy(steps, [max(v, 1e-300) for v in envelope], "--", label=labels["envelope"])
    else:
        ax.text(0.02, 0.02, f"PL envelope not drawn: {labels['envelope_note']}",
                transform=ax.transAxes, fontsize=7, wrap=True)  # fmt: skip
    ax.set(xlabel="step", ylabel="suboptimality", title="Loss suboptimality")
    ax.legend()
    save(fig, "suboptimality.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    t, p = _finite_pairs(steps, run.column("pl_ratio"))
    ax.plot(t, p, label="PL ratio ‖∇L‖²/(2(L − L*))")
    tl, lo = _finite_pairs(steps, run.column("lambda_min_lower"))
    th, hi = _finite_pairs(steps, run.column("lambda_max_upper"))
    if tl and th and len(tl) == len(th):
        ax.fill_between(tl, lo, hi, alpha=0.2, label=labels["band"])
        ax.plot(tl, lo, "o-", ms=3, label="λ_min lower end")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="PL scale", title="PL ratio and NTK spectrum band")
    ax.legend(fontsize=7)
    save(fig, "pl_ratio.png")

    fig, ax1 = plt.subplots(figsize=(6, 4))
    t, d = _finite_pairs(steps, run.column("param_drift"))
    ax1.plot(t, d, color="C0", label="‖θ_t − θ_0‖")
    ax1.set(xlabel="step", ylabel="parameter drift")
    ax2 = ax1.twinx()
    for name, style in (("ntk_drift_op", "o-"), ("ntk_drift_fro", "s--")):
        tn, dn = _finite_pairs(steps, run.column(name))
        ax2.plot(tn, dn, style, ms=3, label=name)
    ax2.set_ylabel("NTK drift (PL scale)")
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
    ax1.set_title("Parameter and NTK drift")
    save(fig, "drift.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    t, c = _finite_pairs(steps, run.column("lambda_min_lower"))
    ax.plot(t, c, "s-", ms=3, label=labels["lambda_min"])
    t, m = _finite_pairs(steps, run.column("mu_region_est"))
    ax.plot(t, m, "o--", ms=3, label="region estimate μ̂ = λ_0 − L̂_Θ·r (optimistic)")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=min([abs(v) for v in c + m if v != 0] or [1.0]))
    ax.set(xlabel="step", ylabel="PL scale", title=labels["mu_title"])
    ax.legend(fontsize=8)
    save(fig, "mu_region_est.png")
    return written
