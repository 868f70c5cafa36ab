"""Run summary from the logged history: stable window, rate fit, envelopes, verdict.

Stable window (default): from the first logged step to the last logged step whose
suboptimality L − L* is above a float floor, floor = max(1e-13 · (L₀ − L*), 1e3 · ε · L₀)
with ε the dtype's machine epsilon: below it the loss is rounding noise and the linear rate
is no longer measurable. ``Diagnostics(stable_window=(first, last))`` overrides it.
"""

from __future__ import annotations

import math
from typing import Any

SUMMARY_FIELDS = [
    "lambda0",
    "pl_envelope",
    "fitted_rate",
    "fit_r2",
    "predicted_rate",
    "max_param_drift",
    "L_theta_est",
    "mu_cert_final",
    "step_size_ok",
    "stayed_local",
    "verdict",
]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def stable_window(
    history: list[dict[str, Any]], l_star: float, eps: float, override: tuple[int, int] | None
) -> tuple[int, int]:
    """(first, last) logged steps of the window (see module docstring)."""
    steps = [r["step"] for r in history]
    if override is not None:
        return override
    losses = [r["loss"] for r in history]
    sub0 = losses[0] - l_star
    floor = max(1e-13 * sub0, 1e3 * eps * abs(losses[0]))
    last = steps[0]
    for r in history:
        if not _finite(r["loss"]) or r["loss"] - l_star <= floor:
            break
        last = r["step"]
    return steps[0], last


def fit_rate(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope of log(sub) against step: (contraction factor per step, R²)."""
    pts = [(t, math.log(v)) for t, v in points if v > 0 and math.isfinite(v)]
    if len(pts) < 3:
        return math.nan, math.nan
    mt = sum(t for t, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    stt = sum((t - mt) ** 2 for t, _ in pts)
    stv = sum((t - mt) * (v - mv) for t, v in pts)
    svv = sum((v - mv) ** 2 for _, v in pts)
    if stt == 0:
        return math.nan, math.nan
    slope = stv / stt
    r2 = 1.0 if svv == 0 else (stv * stv) / (stt * svv)
    return math.exp(slope), r2


def summarise(
    history: list[dict[str, Any]],
    *,
    lr: float,
    l_star: float,
    eps: float,
    window: tuple[int, int] | None,
    status: str,
    pl_comparable: bool,
) -> dict[str, Any]:
    """The summary record (fields in SUMMARY_FIELDS, plus window and status)."""
    first, last = stable_window(history, l_star, eps, window)
    in_window = [r for r in history if first <= r["step"] <= last]
    ntk_rows = [r for r in in_window if _finite(r.get("lambda_min_lower"))]
    all_ntk = [r for r in history if _finite(r.get("lambda_min_lower"))]
    lambda0 = all_ntk[0]["lambda_min_lower"] if all_ntk else math.nan
    pls = [r["pl_ratio"] for r in in_window if _finite(r.get("pl_ratio"))]
    pl_envelope = min(pls) if pls else math.nan
    rate, r2 = fit_rate([(r["step"], r["loss"] - l_star) for r in in_window])
    mu = min((r["lambda_min_lower"] for r in ntk_rows), default=math.nan)
    predicted = 1.0 - lr * mu if _finite(mu) else math.nan
    drifts = [r["param_drift"] for r in history if _finite(r.get("param_drift"))]
    lips = [r["lipschitz_est"] for r in history if _finite(r.get("lipschitz_est"))]
    certs = [r["mu_cert"] for r in ntk_rows if _finite(r.get("mu_cert"))]
    betas = [r["lambda_max_upper"] for r in all_ntk if _finite(r.get("lambda_max_upper"))]
    beta = max(betas) if betas else math.nan
    step_size_ok = bool(_finite(beta) and lr <= 1.0 / beta)
    stayed_local = bool(
        ntk_rows and all(c > 0 for c in certs) and all(r["lambda_min_lower"] > 0 for r in ntk_rows)
    )
    summary = {
        "lambda0": lambda0,
        "pl_envelope": pl_envelope,
        "fitted_rate": rate,
        "fit_r2": r2,
        "predicted_rate": predicted,
        "max_param_drift": max(drifts) if drifts else math.nan,
        "L_theta_est": max(lips) if lips else 0.0,
        "mu_cert_final": certs[-1] if certs else math.nan,
        "step_size_ok": step_size_ok,
        "stayed_local": stayed_local,
        "window_first": first,
        "window_last": last,
        "beta_est": beta,
        "status": status,
        "pl_bounds_comparable": pl_comparable,
    }
    summary["verdict"] = verdict(summary)
    return summary


def verdict(s: dict[str, Any]) -> str:
    if s["status"].startswith("diverged"):
        return f"{s['status']}: the loss became non-finite; history kept up to that step"
    parts = []
    if s["stayed_local"]:
        parts.append(
            f"stayed in a locally PL region (μ_cert > 0 throughout, final {s['mu_cert_final']:.3g})"
        )
    else:
        parts.append("left the certified PL region or it could not be certified")
    if _finite(s["fitted_rate"]) and _finite(s["predicted_rate"]):
        ok = s["fitted_rate"] <= s["predicted_rate"] + 1e-12
        parts.append(
            f"fitted rate {s['fitted_rate']:.6g} per step "
            f"{'≤' if ok else '>'} predicted {s['predicted_rate']:.6g}"
        )
    if not s["step_size_ok"]:
        parts.append("lr above 1/β (step size not certified stable)")
    if s["status"] != "completed":
        parts.append(s["status"])
    return "; ".join(parts)
