"""The main job, ``lplr-fast demo``: the shipped ``demo`` study (short versions of the
binary-MNIST GD run and the width ablation), a compact table on the terminal and the HTML
report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..training.analysis import CERTIFIED_BASIS, MIN_R2
from .config import load_study
from .report import write_report
from .runner import StudyResult, run_study

DEMO_COLUMNS = [
    ("width", "width"),
    ("lr", "step η"),
    ("lr_beta0", "η·β₀"),
    ("lambda0", "λ₀"),
    ("pl_envelope", "PL envelope"),
    ("pl_cert_min", "cert. PL min"),
    ("rate", "fitted / predicted rate"),
    ("final_param_drift", "drift ‖θ−θ₀‖"),
    ("ntk_rel_drift_final", "NTK change"),
    ("short_verdict", "verdict"),
]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> str:
    return f"{v:.3g}" if _finite(v) else "—"


def _rate(v: Any) -> str:
    """A contraction factor per step: enough digits to tell 0.9997 from 1."""
    return f"{v:.6g}" if _finite(v) else "—"


def _pl_part(row: dict[str, Any]) -> str:
    if row.get("pl_cert_basis", CERTIFIED_BASIS) != CERTIFIED_BASIS:
        return "PL not certified (λ not of the full kernel)"
    certified = row.get("pl_certified_along_path")
    return {True: "PL certified", False: "PL not certified"}.get(certified, "PL n/a")


def _step_part(row: dict[str, Any]) -> str:
    s = row.get("lr_beta0")
    if not _finite(s):
        return ""
    side = "η > 2/β₀" if s > 2 else "η ≤ 1/β₀" if s <= 1 else "1/β₀ < η ≤ 2/β₀"
    return side if row.get("beta_certified", True) else f"{side} (β₀ estimated)"


def _envelope_part(row: dict[str, Any]) -> str:
    held = row.get("envelope_held")
    if held is None:
        return "envelope not checked"
    if held:
        return "envelope held"
    return f"envelope violated (worst ratio {_num(row.get('envelope_worst_ratio'))})"


def _rate_part(row: dict[str, Any]) -> str:
    fitted, predicted, r2 = row.get("fitted_rate"), row.get("predicted_rate"), row.get("fit_r2")
    if not _finite(fitted):
        return ""
    if not (_finite(r2) and r2 >= MIN_R2):
        return f"rate fit not meaningful (R² {_num(r2)})"
    if not _finite(predicted):
        return "rate fitted, none predicted"
    return "rate ≤ predicted" if fitted <= predicted + 1e-12 else "rate > predicted"


def short_verdict(row: dict[str, Any]) -> str:
    """A terse verdict that keeps its parts apart: whether the PL constant was certified
    positive at every NTK step (on a certified basis), where η stands against 1/β₀ and 2/β₀
    (β₀ marked when it is an estimate), whether the envelope inequality held, and the rate:
    fitted against predicted only when the fit means something (R² ≥ 0.9)."""
    status = str(row.get("status", ""))
    if status.startswith("diverged at"):
        return "diverged (non-finite loss)"
    parts = (
        ["diverged (finite: loss ended above its start)"] if status.startswith("diverged") else []
    )
    parts += [_pl_part(row), _step_part(row), _envelope_part(row), _rate_part(row)]
    return ", ".join(p for p in parts if p)


def compact_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table as aligned text, one line per run."""
    cells = [[title for _, title in DEMO_COLUMNS]]
    for r in rows:
        if str(r.get("status", "")).startswith("diverged at"):  # later values mean nothing
            r = {
                k: v for k, v in r.items() if k in ("width", "lr", "lr_beta0", "lambda0", "status")
            }
        values = {
            **r,
            "rate": f"{_rate(r.get('fitted_rate'))} / {_rate(r.get('predicted_rate'))}",
            "short_verdict": short_verdict(r),
        }
        line = []
        for key, _ in DEMO_COLUMNS:
            v = values.get(key)
            line.append(v if isinstance(v, str) else str(v) if isinstance(v, int) else _num(v))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(DEMO_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def run_demo(
    out_dir: str | Path,
    *,
    quick: bool = False,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[StudyResult, Path | None]:
    """Run (or resume) the demo study in ``out_dir``; returns the result and the report path
    (None when the study was interrupted)."""
    result = run_study(
        load_study("demo"),
        out_dir,
        quick=quick,
        data_dir=data_dir,
        device=device,
        progress=progress,
    )
    report = write_report(out_dir) if result.status == "completed" else None
    return result, report
