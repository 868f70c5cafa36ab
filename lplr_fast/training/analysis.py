"""Run summary from the logged history: what is certified, what is estimated, and a verdict
that states each separately.

Certified (rigorous at the iterates where the NTK was computed, rounding included):
``pl_cert_min`` = min over NTK steps of ``lambda_min_lower`` — for the squared loss
‖∇L‖² = s²·rᵀΘr ≥ 2·s·λ_min(Θ)·L ≥ 2·s·λ_min(Θ)·(L − L*) (L* ≥ 0), so ``lambda_min_lower``
on the PL scale is a lower bound of the PL constant at that iterate — and
``pl_certified_along_path`` (it is > 0 at every NTK step). This needs certified bounds of the
full kernel on every training sample (``Diagnostics(bounds="certified")``, no subset, and
"full" or k = 1) and L* ≥ 0; otherwise the fields are NaN/False and ``pl_cert_basis`` says
why. The bracket is rigorous for the float64 kernel as computed; the rounding of computing
that kernel (GEMMs and backward passes, relative size ≈ n·k·u·‖Θ‖) is not bounded.

Checked (the theory's inequality, not a least-squares fit): ``envelope_held`` — at every
logged step t of the stable window, L_t − L* ≤ (L₀ − L*)·Π_{s<t}(1 − η·μ_s) with μ_s the
certified λ_min lower end of the latest NTK step ≤ s (certified at NTK steps, carried
between them) — and ``envelope_worst_ratio``, the largest (L_t − L*)/envelope_t (held: ≤ 1
up to 10³·ε). It applies to plain GD (no momentum) with certified μ; otherwise it is None.

Estimated: ``mu_region_est`` = λ₀ − L̂_Θ·r with L̂_Θ the largest observed NTK drift ratio,
a *lower* estimate of the NTK's Lipschitz constant, so the region estimate is optimistic;
``stayed_local`` = it stayed positive (and λ_min_lower > 0) at every NTK step of the window.
A run can be PL-certified along its path while the region estimate is negative (λ₀ small
next to the NTK drift): the verdict keeps the two apart. The rate is fitted by least squares
on log(L − L*) (numpy) and reported with its R²; below R² = 0.9 the verdict says the fitted
rate means little.

Labels follow one test, :func:`pl_basis_problem`: only with a certified basis is
``predicted_rate`` (1 − η·min μ) given (NaN otherwise) and is β (for "η ≤ 1/β") called
certified (``beta_certified``; a subset or trace kernel's λ_max can be below the full
kernel's). A run whose loss stays finite but ends above where it started gets the status
"diverged (finite): …" (:func:`finite_divergence`), not "completed".

Stable window (default): from the first logged step to the last logged step whose
suboptimality L − L* is above a float floor, floor = max(1e-13 · (L₀ − L*), 1e3 · ε · L₀)
with ε the dtype's machine epsilon: below it the loss is rounding noise and the linear rate
is no longer measurable. ``Diagnostics(stable_window=(first, last))`` overrides it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SUMMARY_FIELDS = [
    "lambda0",
    "pl_cert_min",
    "pl_certified_along_path",
    "pl_envelope",
    "envelope_held",
    "envelope_worst_ratio",
    "fitted_rate",
    "fit_r2",
    "predicted_rate",
    "max_param_drift",
    "L_theta_est",
    "mu_region_est_final",
    "step_size_ok",
    "stayed_local",
    "verdict",
]
# summary fields where None means "not applicable" (JSON null reads back as None, not NaN)
NULLABLE_FIELDS = ("envelope_held", "envelope_worst_step", "pl_cert_first_failure")
MIN_R2 = 0.9  # below it a fitted rate is reported as not meaningful
CERTIFIED_BASIS = "certified bounds of the full kernel"  # pl_cert_basis when it certifies


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
    """Least-squares line through (step, log(sub)) for the positive finite points:
    (contraction factor per step = exp(slope), R²). NaN, NaN with fewer than 3 points or a
    single step; R² = 1 when log(sub) is constant (a perfect fit)."""
    pts = [(t, math.log(v)) for t, v in points if _finite(v) and v > 0]
    if len(pts) < 3:
        return math.nan, math.nan
    t = np.array([p[0] for p in pts], dtype=np.float64)
    v = np.array([p[1] for p in pts], dtype=np.float64)
    if np.ptp(t) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(t, v, 1)
    ss_tot = float(np.sum((v - v.mean()) ** 2))
    ss_res = float(np.sum((v - (slope * t + intercept)) ** 2))
    r2 = 1.0 if ss_tot == 0 else max(0.0, 1.0 - ss_res / ss_tot)
    return math.exp(float(slope)), r2


def log_envelope(history: list[dict[str, Any]], lr: float) -> list[float] | None:
    """log Π_{s<t}(1 − η·μ_s) at every logged step t (μ_s: ``lambda_min_lower`` of the latest
    NTK step ≤ s); None when step 0 has no λ_min or some η·μ_s ≥ 1."""
    if not history or not _finite(history[0].get("lambda_min_lower")):
        return None
    logs, log_env = [0.0], 0.0
    mu, prev = history[0]["lambda_min_lower"], history[0]["step"]
    for r in history[1:]:
        if lr * mu >= 1.0:
            return None
        log_env += (r["step"] - prev) * math.log1p(-lr * mu)
        logs.append(log_env)
        prev = r["step"]
        if _finite(r.get("lambda_min_lower")):
            mu = r["lambda_min_lower"]  # in force from this step on
    return logs


def envelope_check(
    history: list[dict[str, Any]], window: tuple[int, int], lr: float, l_star: float, tol: float
) -> tuple[bool | None, float, int | None]:
    """(held, worst ratio, step of the worst ratio) of L_t − L* ≤ (L₀ − L*)·Π(1 − η·μ_s)
    over the logged steps of ``window`` (module docstring). (None, NaN, None) when it cannot
    be evaluated: no certified μ at step 0, L₀ ≤ L*, or η·μ_s ≥ 1 for some s."""
    rows = [r for r in history if r["step"] <= window[1]]
    logs = log_envelope(rows, lr)
    sub0 = rows[0]["loss"] - l_star if rows else math.nan
    if logs is None or not (_finite(sub0) and sub0 > 0):
        return None, math.nan, None
    worst, worst_step = 0.0, None
    for r, log_env in zip(rows, logs, strict=True):
        sub = r["loss"] - l_star
        if r["step"] < window[0] or r is rows[0] or not _finite(sub):
            continue
        log_ratio = -math.inf if sub <= 0 else math.log(sub) - math.log(sub0) - log_env
        ratio = math.inf if log_ratio > 709.0 else math.exp(log_ratio)  # diverged: inf
        if worst_step is None or ratio > worst:
            worst, worst_step = ratio, r["step"]
    if worst_step is None:
        return None, math.nan, None
    return worst <= 1.0 + tol, worst, worst_step


def _pl_certificate(
    ntk_rows: list[dict[str, Any]], basis_ok: str | None
) -> tuple[float, bool, int | None]:
    """(pl_cert_min, certified along the path, first NTK step with λ_min_lower ≤ 0)."""
    if basis_ok is not None or not ntk_rows:
        return math.nan, False, None
    lowers = [(r["step"], r["lambda_min_lower"]) for r in ntk_rows]
    failing = [t for t, v in lowers if not v > 0]
    return min(v for _, v in lowers), not failing, (failing[0] if failing else None)


def pl_basis_problem(summary: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Why a run's λ columns are not certified PL constants of its training loss (None: they
    are). The one test every reader uses (summary verdict, plots, study tables): the summary's
    ``pl_cert_basis``, or for a summary written before that field, the same rule applied to
    the run's configuration."""
    basis = summary.get("pl_cert_basis")
    if isinstance(basis, str):
        return None if basis == CERTIFIED_BASIS else basis
    diag = config.get("diagnostics", {})
    comparable = summary.get("pl_bounds_comparable")
    if comparable is None:
        comparable = diag.get("ntk_subset") is None and (
            diag.get("ntk_compute") == "full" or config.get("k") == 1
        )
    l_star = config.get("l_star", 0.0)
    return _not_certifiable(
        diag.get("bounds") == "certified", bool(comparable), l_star if _finite(l_star) else -1.0
    )


def beta_is_certified(summary: dict[str, Any], config: dict[str, Any]) -> bool:
    """True when β (the λ_max upper ends) bounds the full kernel's λ_max: certified bounds of
    the full kernel (a subset or trace kernel's λ_max can be smaller, so 1/β would be an
    optimistic step limit)."""
    return _beta_certified(pl_basis_problem(summary, config))


def _beta_certified(basis_problem: str | None) -> bool:
    return basis_problem is None or basis_problem.startswith("L* < 0")


def finite_divergence(history: list[dict[str, Any]], l_star: float) -> str | None:
    """The status of a run whose loss stayed finite but ended above where it started
    (L_T − L* > L₀ − L*): "diverged (finite): ..."; None otherwise."""
    losses = [r["loss"] for r in history if _finite(r.get("loss"))]
    if len(losses) < 2 or not losses[-1] - l_star > losses[0] - l_star:
        return None
    return (
        f"diverged (finite): L − L* rose from {losses[0] - l_star:.4g} to {losses[-1] - l_star:.4g}"
    )


def _not_certifiable(certified: bool, pl_comparable: bool, l_star: float) -> str | None:
    """Why λ_min_lower is not a certified PL constant of the training loss (None: it is)."""
    if not certified:
        return "uncertified bounds (Diagnostics(bounds='fast'))"
    if not pl_comparable:
        return "the NTK is a subset or trace kernel, not the training loss's full kernel"
    if l_star < 0:
        return "L* < 0 (the PL inequality is certified for L* ≥ 0)"
    return None


def summarise(
    history: list[dict[str, Any]],
    *,
    lr: float,
    l_star: float,
    eps: float,
    window: tuple[int, int] | None,
    status: str,
    pl_comparable: bool,
    certified: bool = True,
    plain_gd: bool = True,
) -> dict[str, Any]:
    """The summary record (fields in SUMMARY_FIELDS, plus window, status and notes).
    ``certified``: the λ columns are certified brackets; ``plain_gd``: full-batch GD without
    momentum (the envelope inequality's setting)."""
    if status == "completed":
        status = finite_divergence(history, l_star) or status
    first, last = stable_window(history, l_star, eps, window)
    in_window = [r for r in history if first <= r["step"] <= last]
    ntk_rows = [r for r in in_window if _finite(r.get("lambda_min_lower"))]
    all_ntk = [r for r in history if _finite(r.get("lambda_min_lower"))]
    lambda0 = all_ntk[0]["lambda_min_lower"] if all_ntk else math.nan
    pls = [r["pl_ratio"] for r in in_window if _finite(r.get("pl_ratio"))]
    rate, r2 = fit_rate([(r["step"], r["loss"] - l_star) for r in in_window])
    mu = min((r["lambda_min_lower"] for r in ntk_rows), default=math.nan)
    drifts = [r["param_drift"] for r in history if _finite(r.get("param_drift"))]
    lips = [r["lipschitz_est"] for r in history if _finite(r.get("lipschitz_est"))]
    regions = [r["mu_region_est"] for r in ntk_rows if _finite(r.get("mu_region_est"))]
    betas = [r["lambda_max_upper"] for r in all_ntk if _finite(r.get("lambda_max_upper"))]
    beta = max(betas) if betas else math.nan
    basis_problem = _not_certifiable(certified, pl_comparable, l_star)
    pl_min, along_path, first_failure = _pl_certificate(all_ntk, basis_problem)
    envelope: tuple[bool | None, float, int | None] = (None, math.nan, None)
    if basis_problem is None and plain_gd:
        envelope = envelope_check(history, (first, last), lr, l_star, 1e3 * eps)
    summary = {
        "lambda0": lambda0,
        "pl_cert_min": pl_min,
        "pl_certified_along_path": along_path,
        "pl_envelope": min(pls) if pls else math.nan,
        "envelope_held": envelope[0],
        "envelope_worst_ratio": envelope[1],
        "fitted_rate": rate,
        "fit_r2": r2,
        # only from a certified μ: a subset/trace/uncertified λ_min would predict too fast a rate
        "predicted_rate": 1.0 - lr * mu if _finite(mu) and basis_problem is None else math.nan,
        "max_param_drift": max(drifts) if drifts else math.nan,
        "L_theta_est": max(lips) if lips else 0.0,
        "mu_region_est_final": regions[-1] if regions else math.nan,
        "step_size_ok": bool(_finite(beta) and lr <= 1.0 / beta),
        "beta_certified": _beta_certified(basis_problem),
        "stayed_local": bool(
            ntk_rows
            and all(c > 0 for c in regions)
            and all(r["lambda_min_lower"] > 0 for r in ntk_rows)
        ),
        "window_first": first,
        "window_last": last,
        "beta_est": beta,
        "status": status,
        "pl_bounds_comparable": pl_comparable,
        "pl_cert_basis": basis_problem or CERTIFIED_BASIS,
        "pl_cert_first_failure": first_failure,
        "envelope_worst_step": envelope[2],
        "envelope_note": _envelope_note(basis_problem, plain_gd, envelope[0]),
    }
    summary["verdict"] = verdict(summary)
    return summary


def _envelope_note(basis_problem: str | None, plain_gd: bool, held: bool | None) -> str:
    if basis_problem is not None:
        return f"not checked: no certified μ ({basis_problem})"
    if not plain_gd:
        return "not checked: the inequality is for full-batch GD without momentum"
    if held is None:
        return "not checked: no certified μ at step 0, L₀ ≤ L*, or η·μ ≥ 1"
    return "checked at every logged step of the stable window"


def verdict(s: dict[str, Any]) -> str:
    """One line per part, joined by "; ": PL certificate, region estimate, step size,
    envelope, rate (and the status when the run did not complete)."""
    if s["status"].startswith("diverged at"):
        return f"{s['status']}: the loss became non-finite; history kept up to that step"
    parts = [s["status"]] if s["status"].startswith("diverged") else []
    parts += [_pl_part(s), _region_part(s), _step_part(s)]
    if s["envelope_held"] is not None:
        held = "held" if s["envelope_held"] else f"violated at step {s['envelope_worst_step']}"
        parts.append(f"PL envelope {held} (worst ratio {s['envelope_worst_ratio']:.3g})")
    parts.append(_rate_part(s))
    if s["status"] != "completed" and not s["status"].startswith("diverged"):
        parts.append(s["status"])
    return "; ".join(p for p in parts if p)


def _step_part(s: dict[str, Any]) -> str:
    if s.get("beta_certified", True):
        return "η ≤ 1/β" if s["step_size_ok"] else "η > 1/β (step size not certified stable)"
    # β of a subset/trace/uncertified kernel can be below the full kernel's λ_max
    side = "≤" if s["step_size_ok"] else ">"
    return f"η {side} 1/β̂ (β̂ an estimate, not certified: {s['pl_cert_basis']})"


def _pl_part(s: dict[str, Any]) -> str:
    if s["pl_cert_basis"] != CERTIFIED_BASIS:
        return f"PL not certified: {s['pl_cert_basis']}"
    if s["pl_certified_along_path"]:
        return f"PL certified at every NTK step (min μ ≥ {s['pl_cert_min']:.3g})"
    if not _finite(s["pl_cert_min"]):
        return "PL not certified: no NTK step"
    return (
        f"PL not certified along the path (certified λ_min lower end ≤ 0 from step "
        f"{s['pl_cert_first_failure']}; min {s['pl_cert_min']:.3g})"
    )


def _region_part(s: dict[str, Any]) -> str:
    value = s["mu_region_est_final"]
    if not _finite(value):
        return ""
    if s["stayed_local"]:
        return f"stayed in a locally PL region by the estimate μ̂ = λ₀ − L̂·r (final {value:.3g})"
    return (
        f"region estimate μ̂ = λ₀ − L̂·r not positive throughout (final {value:.3g}; an "
        "estimate, optimistic since L̂ underestimates L_Θ)"
    )


def _rate_part(s: dict[str, Any]) -> str:
    rate, predicted, r2 = s["fitted_rate"], s["predicted_rate"], s["fit_r2"]
    if not _finite(rate):
        return ""
    if not (_finite(r2) and r2 >= MIN_R2):
        return f"fitted rate {rate:.6g} not meaningful (R² {r2:.2f} < {MIN_R2})"
    if not _finite(predicted):
        return f"fitted rate {rate:.6g} per step (R² {r2:.3f}; no certified μ to predict from)"
    ok = rate <= predicted + 1e-12
    return (
        f"fitted rate {rate:.6g} per step {'≤' if ok else '>'} predicted {predicted:.6g} "
        f"(R² {r2:.3f})"
    )
