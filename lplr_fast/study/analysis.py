"""Experiment-level analysis of a study table (one row per point).

* "runs": per-point findings only.
* "ablation": per width, the largest step (the fixed one) against each smaller (reduced) step:
  final parameter drift, relative NTK drift and PL-ratio envelope, next to the LPLR study's
  reported drift at width 1024 (1.870 with the fixed step → 0.158 with the reduced one).
* "seeds": the PL-ratio envelope and certified PL minimum per seed, and whether the envelope
  stayed positive for every seed.
* "width-scaling": per width, mean and standard deviation over seeds; the exponent p of
  relative NTK drift ‖Θ_T − Θ₀‖₂/‖Θ₀‖₂ ∝ width^p by least squares on log-log over every
  (width, seed) point, with a 95% t-interval (scipy.stats.linregress); lazy-training theory
  bounds the change by O(width^(−1/2)) in NTK parameterisation (p ≤ −1/2; 1/width expansions
  give p = −1). The same fit for the parameter drift
  ‖θ_T − θ₀‖ (theory: O(1), p ≈ 0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

STUDY_ABLATION = {"width": 1024, "drift_fixed": 1.870, "drift_reduced": 0.158}
"""Aich, Aich & Wade (arXiv 2507.21429): final drift at width 1024, fixed → reduced step."""
LAZY_EXPONENT = -0.5


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _completed(row: dict[str, Any]) -> bool:
    return _completed_status(row.get("status", ""))


def _completed_status(status: Any) -> bool:
    """Completed (not diverged, finite or not, nor interrupted)."""
    return str(status).startswith("completed")


def _fmt(v: Any, spec: str = ".3g") -> str:
    """A number in a general format (never a fixed-point string of a huge value)."""
    return format(v, spec) if _finite(v) else "n/a"


def _ablation(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_width: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_width[r["width"]].append(r)
    widths, comparisons, lines = [], [], []
    for width in sorted(by_width):
        runs = sorted(by_width[width], key=lambda r: -r["lr"])
        fixed = runs[0]
        left = not _completed(fixed) or (_finite(fixed["lr_beta0"]) and fixed["lr_beta0"] > 2)
        widths.append(
            {
                "width": width,
                "lr": fixed["lr"],
                "lr_beta0": fixed["lr_beta0"],
                "status": fixed["status"],
                "final_param_drift": fixed["final_param_drift"],
                "ntk_rel_drift_final": fixed["ntk_rel_drift_final"],
                "pl_envelope": fixed["pl_envelope"],
                "beyond_2_over_beta0": left,
            }
        )
        step = f"width {width}, lr {fixed['lr']:.4g}: η·β₀ = {_fmt(fixed['lr_beta0'])}" + (
            " (> 2: beyond the stable step at initialisation)"
            if _finite(fixed["lr_beta0"]) and fixed["lr_beta0"] > 2
            else ""
        )
        if str(fixed["status"]).startswith("diverged"):
            lines.append(f"{step}; {fixed['status']} (loss {_fmt(fixed['final_loss'])})")
        else:
            lines.append(
                f"{step}; final drift {_fmt(fixed['final_param_drift'])}, NTK change "
                f"{_fmt(fixed['ntk_rel_drift_final'])}, PL envelope "
                f"{_fmt(fixed['pl_envelope'])}; {fixed['status']}"
            )
        for reduced in runs[1:]:
            d_fixed, d_red = fixed["final_param_drift"], reduced["final_param_drift"]
            ratio = (
                d_fixed / d_red if _finite(d_fixed) and _finite(d_red) and d_red > 0 else math.nan
            )
            comparisons.append(
                {
                    "width": width,
                    "lr_fixed": fixed["lr"],
                    "lr_reduced": reduced["lr"],
                    "drift_fixed": d_fixed,
                    "drift_reduced": d_red,
                    "drift_ratio": ratio,
                    "ntk_rel_drift_fixed": fixed["ntk_rel_drift_final"],
                    "ntk_rel_drift_reduced": reduced["ntk_rel_drift_final"],
                    "envelope_fixed": fixed["pl_envelope"],
                    "envelope_reduced": reduced["pl_envelope"],
                    "status_fixed": fixed["status"],
                    "status_reduced": reduced["status"],
                }
            )
    ref = STUDY_ABLATION
    headline = ""
    compared = sorted({c["width"] for c in comparisons})
    if compared:  # width 1024 as in the study, else the widest width run with both steps
        width = ref["width"] if ref["width"] in compared else compared[-1]
        c = min((c for c in comparisons if c["width"] == width), key=lambda c: c["lr_reduced"])
        fixed_note = "" if _completed_status(c["status_fixed"]) else f" ({c['status_fixed']})"
        reduced_note = "" if _completed_status(c["status_reduced"]) else f" ({c['status_reduced']})"
        headline = (
            f"width {width}: final drift {_fmt(c['drift_fixed'], '.4g')} (lr "
            f"{c['lr_fixed']:.3g}{fixed_note}) → {_fmt(c['drift_reduced'], '.4g')} (lr "
            f"{c['lr_reduced']:.3g}{reduced_note}), ×{_fmt(c['drift_ratio'], '.3g')}; the study "
            f"reports, at width {ref['width']}, {ref['drift_fixed']:.3f} → "
            f"{ref['drift_reduced']:.3f} (×{ref['drift_fixed'] / ref['drift_reduced']:.1f}); PL "
            f"envelope {_fmt(c['envelope_fixed'])} → {_fmt(c['envelope_reduced'])}"
        )
        lines.insert(0, headline)
    return {"widths": widths, "comparisons": comparisons, "headline": headline, "lines": lines}


def _seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    envelopes = [r["pl_envelope"] for r in rows]
    finite = [e for e in envelopes if _finite(e)]
    # a diverged run (even one whose loss stayed finite) has no stable regime to speak for
    completed = [r for r in rows if _completed(r)]
    positive = (
        len(completed) == len(rows) and len(finite) == len(rows) and all(e > 0 for e in finite)
    )
    lines = [
        f"seed {r['seed']}: PL envelope {_fmt(r['pl_envelope'])}, certified PL min "
        f"{_fmt(r['pl_cert_min'])}, λ₀ {_fmt(r['lambda0'])}, final loss {_fmt(r['final_loss'])}, "
        f"{r['status']}"
        for r in rows
    ]
    lines.insert(
        0,
        f"PL-ratio envelope {'positive' if positive else 'NOT positive'} for "
        f"{sum(1 for r in completed if _finite(r['pl_envelope']) and r['pl_envelope'] > 0)}/"
        f"{len(rows)} seeds (completed runs only)"
        + (f" (min {min(finite):.3g}, max {max(finite):.3g})" if finite else ""),
    )
    fallbacks = sorted({r["fallback"] for r in rows if r.get("fallback")})
    lines += [f"data fallback: {f}" for f in fallbacks]
    return {"envelope_positive_all_seeds": positive, "envelopes": envelopes, "lines": lines}


def fit_power_law(widths: list[float], values: list[float]) -> dict[str, Any]:
    """Least squares log(value) = a + p·log(width): p, its standard error, a 95% t-interval,
    R² and the number of points (NaN when fewer than 3 points or 2 distinct widths)."""
    from scipy import stats

    pairs = [(w, v) for w, v in zip(widths, values, strict=True) if _finite(v) and v > 0 and w > 0]
    if len(pairs) < 3 or len({w for w, _ in pairs}) < 2:
        return {
            "exponent": math.nan,
            "stderr": math.nan,
            "ci95": [math.nan, math.nan],
            "intercept": math.nan,
            "r2": math.nan,
            "points": len(pairs),
        }
    x = np.log([w for w, _ in pairs])
    y = np.log([v for _, v in pairs])
    fit = stats.linregress(x, y)
    half = float(stats.t.ppf(0.975, len(pairs) - 2) * fit.stderr)
    return {
        "exponent": float(fit.slope),
        "stderr": float(fit.stderr),
        "ci95": [float(fit.slope) - half, float(fit.slope) + half],
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
        "points": len(pairs),
    }


def _width_scaling(rows: list[dict[str, Any]]) -> dict[str, Any]:
    used = [r for r in rows if _completed(r)]
    by_width: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in used:
        by_width[r["width"]].append(r)
    per_width = []
    for width in sorted(by_width):
        entry: dict[str, Any] = {"width": width, "seeds": len(by_width[width])}
        for name in (
            "lambda0",
            "ntk_rel_drift_final",
            "final_param_drift",
            "pl_envelope",
            "fitted_rate",
            "lr_beta0",
        ):
            vals = [r[name] for r in by_width[width] if _finite(r[name])]
            entry[name] = float(np.mean(vals)) if vals else math.nan
            entry[f"{name}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
        per_width.append(entry)
    widths = [float(r["width"]) for r in used]
    ntk_fit = fit_power_law(widths, [r["ntk_rel_drift_final"] for r in used])
    drift_fit = fit_power_law(widths, [r["final_param_drift"] for r in used])
    excluded = len(rows) - len(used)
    lines = [
        f"relative NTK drift ∝ width^p: p = {_fmt(ntk_fit['exponent'], '.3f')}, 95% CI "
        f"[{_fmt(ntk_fit['ci95'][0], '.3f')}, {_fmt(ntk_fit['ci95'][1], '.3f')}] "
        f"(R² {_fmt(ntk_fit['r2'], '.3f')}, {ntk_fit['points']} runs); lazy-training theory "
        f"bounds the change by O(width^{LAZY_EXPONENT}), i.e. p ≤ {LAZY_EXPONENT}",
        f"parameter drift ∝ width^p: p = {_fmt(drift_fit['exponent'], '.3f')}, 95% CI "
        f"[{_fmt(drift_fit['ci95'][0], '.3f')}, {_fmt(drift_fit['ci95'][1], '.3f')}] "
        "(theory: O(1), p ≈ 0)",
    ]
    if excluded:
        lines.append(
            f"{excluded} run(s) not completed (diverged or interrupted) left out of the fits"
        )
    return {
        "per_width": per_width,
        "ntk_drift_fit": ntk_fit,
        "param_drift_fit": drift_fit,
        "lines": lines,
    }


def analyse(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The analysis of ``kind`` (module docstring) as a JSON-ready dict with ``lines``:
    readable findings for the terminal and the report."""
    if not rows:
        return {"kind": kind, "lines": ["no finished points"]}
    if kind == "ablation":
        result = _ablation(rows)
    elif kind == "seeds":
        result = _seeds(rows)
    elif kind == "width-scaling":
        result = _width_scaling(rows)
    else:
        result = {"lines": []}
    result["kind"] = kind
    fallbacks = sorted({r["fallback"] for r in rows if r.get("fallback")})
    if fallbacks and kind != "seeds":
        result["lines"] += [f"data fallback: {f}" for f in fallbacks]
    return result
