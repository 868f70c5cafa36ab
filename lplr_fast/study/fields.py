"""The one place where the study layer reads what :func:`lplr_fast.train` reports.

The training diagnostics are being renamed to say what they are ("honest certificates"):
``mu_cert`` (an optimistic *estimate* λ₀ − L̂_Θ·r) becomes ``mu_region_est``, and the summary
gains ``pl_cert_min``, ``pl_certified_along_path`` and ``envelope_held``. This module reads the
new names when the training version provides them and otherwise derives what can be derived
honestly from the current history, so the rest of the study layer only ever uses the new
names. When the new training API lands, only :data:`HISTORY_ALIASES` and the fallbacks below
change.

What the fallbacks derive (only when the run's NTK bounds are certified, cover the whole
training set, and bracket the PL ratio: ``bounds="certified"``, no ``ntk_subset``, ``full``
kernel or k = 1; otherwise they are NaN / None):

* ``pl_cert_min``: the minimum over NTK steps of ``lambda_min_lower``, a rigorous lower bound
  of λ_min(Θ_t) on the PL scale, hence of the PL constant at each of those iterates;
* ``pl_certified_along_path``: ``pl_cert_min > 0`` (at NTK steps);
* ``envelope_held``: not derived (it needs the certified μ in force between NTK steps, which
  only the training loop can provide): None until the training reports it.
"""

from __future__ import annotations

import math
from typing import Any

from ..training import RunResult
from ..training.analysis import CERTIFIED_BASIS, beta_is_certified, pl_basis_problem

HISTORY_ALIASES: dict[str, tuple[str, ...]] = {
    "mu_region_est": ("mu_region_est", "mu_cert"),
}
SUMMARY_ALIASES: dict[str, tuple[str, ...]] = {
    "mu_region_est": ("mu_region_est_final", "mu_region_est", "mu_cert_final"),
}
CERTIFICATE_FIELDS = (
    "mu_region_est",
    "pl_cert_min",
    "pl_certified_along_path",
    "envelope_held",
    "envelope_worst_ratio",
)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def history_column(run: RunResult, name: str) -> list[float]:
    """A history column by its new name (NaN where not logged or not provided)."""
    for actual in HISTORY_ALIASES.get(name, (name,)):
        if any(actual in row for row in run.history):
            return run.column(actual)
    return [math.nan] * len(run.history)


def bounds_certify_pl(run: RunResult) -> bool:
    """True when the λ columns are certified bounds of the PL constant at their iterate (the
    training summary's test, :func:`lplr_fast.training.analysis.pl_basis_problem`)."""
    return pl_basis_problem(run.summary, run.config) is None


def certificate_fields(run: RunResult) -> dict[str, Any]:
    """``mu_region_est``, ``pl_cert_min``, ``pl_certified_along_path``, ``envelope_held``,
    ``envelope_worst_ratio``, ``pl_cert_basis`` (why the λ columns are not certified PL
    constants, or that they are) and ``beta_certified`` of a run (module docstring);
    ``*_source`` says whether each came from the training summary or was derived here."""
    s = run.summary
    problem = pl_basis_problem(s, run.config)
    out: dict[str, Any] = {
        "pl_cert_basis": problem or CERTIFIED_BASIS,
        "beta_certified": beta_is_certified(s, run.config),
    }
    for alias in SUMMARY_ALIASES["mu_region_est"]:
        if alias in s:
            out["mu_region_est"] = s[alias]
            break
    else:
        out["mu_region_est"] = math.nan
    if "pl_cert_min" in s:
        out["pl_cert_min"] = s["pl_cert_min"]
        out["pl_certified_along_path"] = s.get("pl_certified_along_path")
        out["pl_cert_source"] = "training"
    else:
        lows = [v for v in run.column("lambda_min_lower") if _finite(v)]
        certified = problem is None and bool(lows)
        out["pl_cert_min"] = min(lows) if certified else math.nan
        out["pl_certified_along_path"] = (min(lows) > 0) if certified else None
        out["pl_cert_source"] = "study (min of lambda_min_lower at NTK steps)"
    out["envelope_held"] = s.get("envelope_held")
    out["envelope_worst_ratio"] = s.get("envelope_worst_ratio", math.nan)
    return out
