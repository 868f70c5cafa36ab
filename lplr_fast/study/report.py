"""``lplr-fast report DIR``: one self-contained HTML file for a study folder (``lplr-fast run``,
``sweep`` or ``demo``) or a single training run folder (``lplr-fast train``).

The page holds the configuration, the analysis findings, any data fallback, the summary
table (one row per run), each run's verdict, and the figures (figures.py) as base64 PNGs, so it
opens in any browser without Python or the run folders.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any

from .. import __version__
from .._backend import backend_info
from .._compat import UTC
from ..training import RunResult
from ..training.analysis import CERTIFIED_BASIS
from ..training.io import atomic_write_bytes
from . import figures
from .analysis import analyse
from .runner import load_rows

REPORT_NAME = "report.html"
MAX_RUN_PANELS = 12
TABLE_COLUMNS = [
    ("point", "run"),
    ("status", "status"),
    ("dataset", "data"),
    ("n", "n"),
    ("lr", "η"),
    ("lr_beta0", "η·β₀"),
    ("beta_certified", "β₀ certified"),
    ("pl_cert_basis", "λ columns"),
    ("lambda0", "λ₀ (λ_min lower end, step 0)"),
    ("pl_envelope", "PL envelope"),
    ("pl_cert_min", "certified PL min"),
    ("pl_certified_along_path", "PL certified along path"),
    ("mu_region_est", "μ̂ region (estimate)"),
    ("envelope_held", "envelope held"),
    ("fitted_rate", "fitted rate"),
    ("fit_r2", "R²"),
    ("predicted_rate", "predicted rate"),
    ("final_param_drift", "final ‖θ−θ₀‖"),
    ("ntk_rel_drift_final", "‖Θ−Θ₀‖/‖Θ₀‖"),
]
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.4}
h1{font-size:1.5em}
h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:right}th{background:#f2f2f2}td.l{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
.note{color:#555;font-size:.85em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""


def _fmt(v: Any) -> str:
    if v == CERTIFIED_BASIS:
        return "certified PL bounds (full kernel)"
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4g}"
    return str(v)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in TABLE_COLUMNS)
    body = []
    for r in rows:
        cells = []
        for key, _ in TABLE_COLUMNS:
            cls = ' class="l"' if key in ("point", "status", "dataset", "pl_cert_basis") else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(r.get(key)))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _panel_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that get their own figure: all, or (when many) the lowest seed of each setting."""
    if len(rows) <= MAX_RUN_PANELS:
        return rows
    low = min(r.get("seed", 0) for r in rows)
    return [r for r in rows if r.get("seed", 0) == low][:MAX_RUN_PANELS]


def _study_sections(folder: Path) -> tuple[str, list[str]]:
    study = _load_json(folder / "study.json")
    rows = load_rows(folder / "table.json")
    saved = _load_json(folder / "analysis.json") or {}
    # recomputed from the table (a pure function of it), so the report follows the code
    analysis = {**analyse(study.get("analysis", "runs"), rows), "status": saved.get("status", "")}
    title = f"{study['name']}{' (--quick)' if study.get('quick') else ''}"
    parts = [f"<p>{html.escape(study.get('description', ''))}</p>"]
    status = analysis.get("status", "")
    if status and status != "completed":
        parts.append(f'<p class="warn">Study {html.escape(status)}: rerun to finish.</p>')
    fallbacks = sorted({r["fallback"] for r in rows if r.get("fallback")})
    for note in fallbacks:
        parts.append(f'<p class="warn">Data fallback: {html.escape(note)}</p>')
    lines = analysis.get("lines", [])
    if lines:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        parts.append(f"<h2>Findings</h2><ul>{items}</ul>")
    parts.append(f"<h2>Summary ({len(rows)} runs)</h2>{_table(rows)}")
    parts.append(
        '<p class="note">λ₀, PL min, μ̂ on the PL scale (λ(Θ)/n for L = ‖f − y‖²/(2n)). '
        "Certified: rigorous float64 bounds. μ̂ = λ₀ − L̂_Θ·r is an optimistic estimate (L̂_Θ "
        "is the largest drift ratio seen, a lower estimate of the Lipschitz constant). "
        "η·β₀: the step against the largest NTK eigenvalue at initialisation (GD is stable "
        "on a quadratic for η·β < 2). Full table: table.csv.</p>"
    )
    verdicts = "".join(
        f"<li><b>{html.escape(r['point'])}</b>: {html.escape(str(r.get('verdict', '')))}</li>"
        for r in rows
    )
    parts.append(f"<h2>Verdicts</h2><ul>{verdicts}</ul>")
    parts.append("<h2>Figures</h2>")
    runs = {
        r["folder"]: RunResult.load(folder / "points" / r["folder"] / "run")
        for r in rows
        if (folder / "points" / r["folder"] / "run" / "summary.json").is_file()
    }
    labels = {r["folder"]: r["point"] for r in rows}
    kind = analysis.get("kind", study.get("analysis"))
    if kind == "width-scaling" and rows:
        parts.append(_img(figures.scaling_figure(rows, analysis), "width scaling"))
    if kind == "ablation" and rows:
        parts.append(_img(figures.ablation_figure(rows), "width ablation"))
    if len(runs) > 1:
        overlay = [(labels[f], run) for f, run in runs.items()]
        parts.append(_img(figures.overlay_suboptimality(overlay), "suboptimality"))
    for r in _panel_points(rows):
        if r["folder"] in runs:
            parts.append(_img(figures.run_panels(runs[r["folder"]], r["point"]), r["point"]))
    if len(rows) > MAX_RUN_PANELS:
        parts.append(f'<p class="note">Per-run figures shown for {MAX_RUN_PANELS} runs.</p>')
    config = html.escape(study.get("text", ""))
    described = "".join(
        f"<li>{html.escape(p['label'])}: folder points/{html.escape(p['folder'])}</li>"
        for p in study.get("points", [])
    )
    resolved = [
        _load_json(folder / "points" / r["folder"] / "resolved.json") or {} for r in rows[:1]
    ]
    extra = (
        f"<p>Data: {html.escape(resolved[0].get('data', ''))}<br>Model (first run): "
        f"{html.escape(resolved[0].get('model', ''))}</p>"
        if resolved
        else ""
    )
    parts.append(
        f"<h2>Configuration</h2>{extra}<p>Source: {html.escape(study.get('source', ''))}</p>"
        f"<pre>{config}</pre><details><summary>Points</summary><ul>{described}</ul></details>"
    )
    return title, parts


def _run_sections(folder: Path) -> tuple[str, list[str]]:
    run = RunResult.load(folder)
    from .fields import certificate_fields

    row = {
        "point": folder.name,
        **run.summary,
        **certificate_fields(run),
        "lr": run.config.get("lr"),
    }
    parts = [
        f"<h2>Summary</h2>{_table([row])}",
        f"<h2>Verdict</h2><p>{html.escape(str(run.summary.get('verdict', '')))}</p>",
        "<h2>Figures</h2>",
        _img(figures.run_panels(run, folder.name), folder.name),
        f"<h2>Configuration</h2><pre>{html.escape(json.dumps(run.config, indent=1))}</pre>",
    ]
    return f"training run {folder.name}", parts


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of ``folder`` (a study or a training run) to ``out`` (default
    ``folder/report.html``); returns its path."""
    folder = Path(folder)
    if (folder / "study.json").is_file():
        title, parts = _study_sections(folder)
    elif (folder / "summary.json").is_file():
        title, parts = _run_sections(folder)
    else:
        raise FileNotFoundError(
            f"{folder} is neither a study folder (study.json, from lplr-fast run/sweep/demo) nor "
            "a training run folder (summary.json, from lplr-fast train)"
        )
    info = backend_info()
    stamp = datetime.datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"<h1>LPLR study report: {html.escape(title)}</h1><p class='note'>lplr_fast "
        f"{__version__}, {'compiled' if info.get('compiled') else 'PyTorch fallback'} backend; "
        f"written {stamp} from {html.escape(str(folder))}</p>"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + header
        + "\n".join(parts)
        + "</body></html>\n"
    )
    path = Path(out) if out is not None else folder / REPORT_NAME
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
