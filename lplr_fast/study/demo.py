"""The main job, ``lplr-fast demo``: the shipped ``demo`` study (short versions of the
binary-MNIST GD run and the width ablation), a compact table on the terminal and the HTML
report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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


def short_verdict(row: dict[str, Any]) -> str:
    """A terse verdict from the certified fields and the step size: whether the PL constant
    was certified positive at every NTK step, where η stands against 1/β₀ and 2/β₀, and
    whether the fitted rate is at most the predicted one."""
    if str(row.get("status", "")).startswith("diverged"):
        return "diverged"
    parts = []
    certified = row.get("pl_certified_along_path")
    parts.append({True: "PL certified", False: "PL not certified"}.get(certified, "PL n/a"))
    s = row.get("lr_beta0")
    if _finite(s):
        parts.append("η > 2/β₀" if s > 2 else "η ≤ 1/β₀" if s <= 1 else "1/β₀ < η ≤ 2/β₀")
    fitted, predicted = row.get("fitted_rate"), row.get("predicted_rate")
    if _finite(fitted) and _finite(predicted):
        parts.append("rate ≤ predicted" if fitted <= predicted + 1e-12 else "rate > predicted")
    return ", ".join(parts)


def compact_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table as aligned text, one line per run."""
    cells = [[title for _, title in DEMO_COLUMNS]]
    for r in rows:
        if str(r.get("status", "")).startswith("diverged"):  # later values mean nothing
            r = {
                k: v for k, v in r.items() if k in ("width", "lr", "lr_beta0", "lambda0", "status")
            }
        values = {
            **r,
            "rate": f"{_num(r.get('fitted_rate'))} / {_num(r.get('predicted_rate'))}"
            if _finite(r.get("fitted_rate"))
            else f"— / {_num(r.get('predicted_rate'))}",
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
