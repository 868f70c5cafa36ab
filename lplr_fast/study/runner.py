"""Run the points of a study, each once, resumably; collect one table row per point.

Output folder::

    DIR/study.json            what was run: the configuration (text and parsed), --quick, points
    DIR/table.csv, table.json one row per finished point (rewritten after every point)
    DIR/analysis.json         the experiment's analysis of the table (see analysis.py)
    DIR/points/<label>__<key>/
        resolved.json         values derived once before training (β₀ and lr for lr="auto",
                              data and model descriptions) and reused on every resume
        run/                  lplr_fast.train's run folder (history, summary, checkpoint)
        row.json              the point's table row; its presence marks the point finished

Every file is written atomically (temporary file, fsync, rename). A point whose ``row.json``
exists is skipped; any other point is (re)started through ``train(..., resume=True)``, which
continues from its last checkpoint. So a sweep killed at any moment (SIGKILL included) loses
at most the steps since the last checkpoint of the point that was running.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..spectrum import as_matrix, eig_bounds
from ..training import Diagnostics, RunResult, train
from ..training.config import loss_scale
from ..training.io import atomic_write_csv, atomic_write_json, exclusive_lock
from ..training.parallel import SingleProcess, current
from .build import BuiltData, ImageCache, build_data, build_model, dataset_now, describe_model
from .config import Point, StudyConfig
from .fields import certificate_fields

ROW_COLUMNS = [
    "point",
    "status",
    "dataset",
    "n",
    "k",
    "model",
    "width",
    "depth",
    "parameterization",
    "seed",
    "optimizer",
    "lr",
    "beta0",
    "lr_beta0",
    "steps",
    "lambda0",
    "pl_envelope",
    "pl_cert_min",
    "pl_certified_along_path",
    "mu_region_est",
    "envelope_held",
    "envelope_worst_ratio",
    "pl_cert_basis",
    "beta_certified",
    "fitted_rate",
    "fit_r2",
    "predicted_rate",
    "step_size_ok",
    "loss0",
    "final_loss",
    "final_param_drift",
    "max_param_drift",
    "ntk_rel_drift_final",
    "ntk_rel_drift_max",
    "verdict",
    "key",
    "folder",
    "fallback",
    "seconds",
]


@dataclass
class StudyResult:
    """rows: one dict per finished point (ROW_COLUMNS and the grid axes); status:
    "completed" or "interrupted at point …"; analysis: the experiment's analysis."""

    out_dir: Path
    rows: list[dict[str, Any]]
    status: str
    analysis: dict[str, Any] = field(default_factory=dict)
    reused: int = 0


class StudyLockedError(RuntimeError):
    """Another process is running a study in the same output folder."""


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _beta0(net: torch.nn.Module, data: BuiltData, loss: str, parallel: SingleProcess) -> float:
    """Certified upper bound of λ_max(Θ₀) on the PL scale of ``loss`` (all samples; the
    kernel computed by all processes of ``parallel``)."""
    n, k = data.y.shape
    kernel = as_matrix(parallel.kernel(net, data.x, "full"))
    return eig_bounds(kernel * loss_scale(loss, n, k), which=("max",)).lambda_max_upper


def _resolve(
    point: Point,
    pdir: Path,
    net: torch.nn.Module,
    data: BuiltData,
    desc: str,
    parallel: SingleProcess,
) -> dict:
    """resolved.json: written once, reused on resume so the run's identity never changes
    (read and written by rank 0 under a launcher)."""
    path = pdir / "resolved.json"
    saved = parallel.share(_read_json(path) if parallel.writes else None)
    if isinstance(saved, dict) and saved.get("key") == point.key:
        return saved
    tr = point.config["train"]
    beta0 = _beta0(net, data, tr["loss"], parallel) if tr["lr"] == "auto" else math.nan
    lr = tr["lr_beta"] / beta0 if tr["lr"] == "auto" else float(tr["lr"])
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"point {point.label}: lr resolved to {lr} (β₀ = {beta0})")
    resolved = {
        "key": point.key,
        "label": point.label,
        "lr": lr,
        "beta0_at_resolve": beta0,
        "data": data.description,
        "data_meta": data.meta,
        "model": desc,
    }
    if parallel.writes:
        atomic_write_json(path, resolved)
    return resolved


def _history_values(run: RunResult) -> dict[str, Any]:
    """Loss, drift and relative NTK drift read off the history."""
    losses = [v for v in run.column("loss") if _finite(v)]
    drifts = [v for v in run.column("param_drift") if _finite(v)]
    ntk = [
        (d, hi)
        for d, hi in zip(run.column("ntk_drift_op"), run.column("lambda_max_upper"), strict=True)
        if _finite(d) and _finite(hi)
    ]
    norm0 = ntk[0][1] if ntk else math.nan  # ‖Θ₀‖₂ = λ_max(Θ₀) (upper end of its bracket)
    rel = [d / norm0 for d, _ in ntk] if ntk and norm0 > 0 else []
    return {
        "loss0": losses[0] if losses else math.nan,
        "final_loss": losses[-1] if losses else math.nan,
        "final_param_drift": drifts[-1] if drifts else math.nan,
        "max_param_drift": max(drifts) if drifts else math.nan,
        "beta0_hist": norm0,
        "ntk_rel_drift_final": rel[-1] if rel else math.nan,
        "ntk_rel_drift_max": max(rel) if rel else math.nan,
    }


def point_row(point: Point, run: RunResult, resolved: dict, seconds: float) -> dict[str, Any]:
    """The table row of a finished point (ROW_COLUMNS plus its grid axes)."""
    cfg, s = point.config, run.summary
    hist = _history_values(run)
    beta0 = resolved["beta0_at_resolve"]  # certified, of the full kernel (lr = "auto")
    certificates = certificate_fields(run)
    if not _finite(beta0):  # the first logged λ_max upper end: certified only on that basis
        beta0 = hist["beta0_hist"]
    else:
        certificates["beta_certified"] = True
    hist.pop("beta0_hist")
    meta = resolved["data_meta"]
    row: dict[str, Any] = {
        "point": point.label,
        "status": s.get("status", ""),
        "dataset": meta.get("dataset"),
        "n": run.config.get("n"),
        "k": run.config.get("k"),
        "model": resolved["model"],
        "width": cfg["model"]["width"],
        "depth": cfg["model"]["depth"],
        "parameterization": cfg["model"]["parameterization"],
        "seed": cfg["model"]["seed"],
        "optimizer": cfg["train"]["optimizer"],
        "lr": resolved["lr"],
        "beta0": beta0,
        "lr_beta0": resolved["lr"] * beta0,
        "steps": cfg["train"]["steps"],
        "lambda0": s.get("lambda0", math.nan),
        "pl_envelope": s.get("pl_envelope", math.nan),
        "fitted_rate": s.get("fitted_rate", math.nan),
        "fit_r2": s.get("fit_r2", math.nan),
        "predicted_rate": s.get("predicted_rate", math.nan),
        "step_size_ok": s.get("step_size_ok"),
        "verdict": s.get("verdict", ""),
        "key": point.key,
        "folder": point.folder,
        "fallback": meta.get("fallback", ""),
        "seconds": seconds,
        **hist,
        **certificates,
    }
    for name, value in point.axes.items():
        row.setdefault(name, value)
    return row


def run_point(
    point: Point,
    pdir: Path,
    images: ImageCache,
    device: str = "cpu",
    on_start: Any = None,
) -> tuple[dict[str, Any] | None, str]:
    """Train one point (resuming its checkpoint); returns (row, status). The row is None
    when the run was interrupted (Ctrl-C): rerun to continue."""
    cfg = point.config
    data = build_data(cfg["data"], cfg["model"]["kind"] == "mlp", images)
    k = data.y.shape[1]
    dtype = data.x.dtype
    net = build_model(cfg["model"], data.x, k, dtype)
    parallel = current()
    desc = describe_model(cfg["model"], net, data.x, k)
    resolved = _resolve(point, pdir, net, data, desc, parallel)
    if on_start is not None:
        on_start(point, resolved)
    tr, dg = cfg["train"], cfg["diagnostics"]
    diagnostics = Diagnostics(
        every=dg["every"],
        ntk_every=dg["ntk_every"],
        ntk_subset=dg["ntk_subset"] or None,
        bounds=dg["bounds"],
        ntk_compute=dg["ntk_compute"],
    )
    started = time.monotonic()
    result = train(
        net.to(device),
        data.x.to(device),
        data.y.to(device),
        optimizer=tr["optimizer"],
        lr=resolved["lr"],
        steps=tr["steps"],
        batch_size=tr["batch_size"] or None,
        momentum=tr["momentum"],
        loss=tr["loss"],
        diagnostics=diagnostics,
        seed=tr["seed"],
        out_dir=pdir / "run",
        resume=True,
    )
    status = str(result.summary.get("status", ""))
    if status.startswith("interrupted"):
        return None, status
    row = point_row(point, result, resolved, time.monotonic() - started)
    if parallel.writes:
        atomic_write_json(pdir / "row.json", row)
    return row, status


def restore_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from JSON: null → NaN, "inf"/"-inf" → ±inf (the JSON writer's
    encoding of non-finite numbers)."""
    return {
        k: math.nan if v is None else float(v) if v in ("inf", "-inf") else v
        for k, v in row.items()
    }


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a table.json, restored (see :func:`restore_row`); [] if it is missing."""
    rows = _read_json(path)
    return [restore_row(r) for r in rows] if isinstance(rows, list) else []


def finished_row(point: Point, pdir: Path) -> dict[str, Any] | None:
    """The saved row of a finished point, or None (not finished, or another configuration)."""
    row = _read_json(pdir / "row.json")
    if isinstance(row, dict) and row.get("key") == point.key:
        return restore_row(row)
    return None


def _check_fallback_still_current(
    point: Point, row: dict[str, Any], images: ImageCache, out: Path
) -> None:
    """A finished point that ran on a fallback dataset is not reused once a dataset before it
    is available (the rerun has other data): ValueError saying what to do."""
    if not row.get("fallback"):
        return
    now = dataset_now(point.config["data"], images)
    if now is not None and now != row.get("dataset"):
        raise ValueError(
            f"point {point.label} in {out} ran on the fallback dataset {row.get('dataset')} "
            f"({point.config['data']['dataset']} was not found then), but {now} is available "
            f"now: the data changed. Use another --out (or delete {out}) to run on {now}, or "
            "rerun without the data folder to keep the fallback results"
        )


def write_table(out: Path, rows: list[dict[str, Any]]) -> None:
    """table.csv and table.json, one row per point (ROW_COLUMNS first, then grid axes)."""
    extra = sorted({c for r in rows for c in r} - set(ROW_COLUMNS))
    atomic_write_csv(out / "table.csv", rows, ROW_COLUMNS + extra)
    atomic_write_json(out / "table.json", rows)


def run_study(
    study: StudyConfig,
    out_dir: str | Path,
    *,
    quick: bool = False,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> StudyResult:
    """Run every point of ``study`` not yet finished in ``out_dir`` (module docstring).
    One process at a time per folder (a lock file; a second one gets StudyLockedError)."""
    out = Path(out_dir)
    points = study.points(quick=quick)
    parallel = current()
    with _exclusive_shared(out, parallel):
        return _run_points(study, out, points, quick, data_dir, device, progress, parallel)


@contextlib.contextmanager
def _exclusive_shared(out: Path, parallel: SingleProcess) -> Iterator[None]:
    """:func:`_exclusive` held by rank 0 (the only writer); every rank learns whether it
    got the lock (under a launcher, the ranks of one job share the folder)."""
    if parallel.world == 1:
        with _exclusive(out):
            yield
        return
    with contextlib.ExitStack() as stack:
        error = None
        if parallel.writes:
            try:
                stack.enter_context(_exclusive(out))
            except StudyLockedError as exc:
                error = str(exc)
        error = parallel.share(error)
        if error is not None:
            raise StudyLockedError(error)
        yield


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out/.lock`` (released by the OS if the process dies)."""
    out.mkdir(parents=True, exist_ok=True)

    def refusal() -> StudyLockedError:
        return StudyLockedError(
            f"{out} is in use by another lplr-fast process; wait for it or use another --out"
        )

    with exclusive_lock(out / ".lock", refusal):
        yield


def _run_points(
    study: StudyConfig,
    out: Path,
    points: list[Point],
    quick: bool,
    data_dir: str | Path | None,
    device: str,
    progress: bool,
    parallel: SingleProcess,
) -> StudyResult:
    from tqdm.auto import tqdm

    from .analysis import analyse

    writes = parallel.writes
    progress = progress and writes
    if writes:
        atomic_write_json(
            out / "study.json",
            {
                **study.as_dict(),
                "text": study.text,
                "quick": quick,
                "points": [{"label": p.label, "key": p.key, "folder": p.folder} for p in points],
            },
        )
    images = ImageCache(data_dir)
    rows: list[dict[str, Any]] = []
    reused = 0
    status = "completed"
    bar = tqdm(total=len(points), disable=not progress, unit="point", desc=study.name)
    try:
        for point in points:
            pdir = out / "points" / point.folder
            row = parallel.share(finished_row(point, pdir) if writes else None)
            if row is None:
                bar.set_postfix_str(point.label)
                row, run_status = run_point(
                    point,
                    pdir,
                    images,
                    device,
                    on_start=lambda p, r: (
                        bar.write(f"{p.label}: {r['data']}; lr = {r['lr']:.4g}")
                        if progress
                        else None
                    ),
                )
                if row is None:
                    status = f"interrupted at point {point.label} ({run_status})"
                    break
            else:
                _check_fallback_still_current(point, row, images, out)
                reused += 1
            rows.append(row)
            if writes:
                write_table(out, rows)
            bar.update(1)
    finally:
        bar.close()
    analysis = analyse(study.analysis, rows) if status == "completed" else {}
    if writes:
        write_table(out, rows)
        atomic_write_json(out / "analysis.json", {"status": status, **analysis})
    return StudyResult(out, rows, status, analysis, reused)
