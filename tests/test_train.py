"""Training runs with LPLR diagnostics: invariants on real runs, files, resume, bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest
import torch
from torch import nn

from lplr_fast import Diagnostics, RunResult, eig_bounds, empirical_ntk, train
from lplr_fast.cli import main as cli_main
from lplr_fast.spectrum import as_matrix
from lplr_fast.training import StopTraining
from lplr_fast.training.checkpoint import RunFolderInUseError
from lplr_fast.training.config import loss_scale


def wide_mlp(d: int = 8, width: int = 1024, k: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).double()


def data(n: int = 12, d: int = 8, k: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = 0.3 * torch.sin(3 * x[:, :k])
    return x, y


def safe_lr(model: nn.Module, x: torch.Tensor, loss: str, k: int, fraction: float = 0.9) -> float:
    kernel = as_matrix(empirical_ntk(model, x)) * loss_scale(loss, x.shape[0], k)
    return fraction / eig_bounds(kernel, which=("max",)).lambda_max_upper


@pytest.mark.parametrize("loss", ["mean_half", "sum_half", "mse"])
@pytest.mark.parametrize("k", [1, 2])
def test_pl_ratio_inside_certified_band_and_monotone_gd(loss, k):
    x, y = data(k=k)
    model = wide_mlp(k=k)
    lr = safe_lr(model, x, loss, k)
    result = train(model, x, y, lr=lr, steps=60, loss=loss,
                   diagnostics=Diagnostics(every=1, ntk_every=10))  # fmt: skip
    ntk_rows = [r for r in result.history if math.isfinite(r.get("lambda_min_lower", math.nan))]
    assert len(ntk_rows) == 7
    for r in ntk_rows:
        assert r["lambda_min_lower"] <= r["pl_ratio"] <= r["lambda_max_upper"], r
        assert r["lambda_min_lower"] <= r["lambda_min_upper"] <= r["lambda_max_upper"]
    losses = result.column("loss")
    assert all(b <= a for a, b in itertools.pairwise(losses)), "GD loss increased"
    assert result.summary["status"] == "completed"
    assert result.summary["pl_bounds_comparable"] is True


def test_rate_no_worse_than_predicted_when_local():
    x, y = data(n=12, d=16)
    model = wide_mlp(d=16, width=4096)
    lr = safe_lr(model, x, "mean_half", 1)
    result = train(model, x, y, lr=lr, steps=150, diagnostics=Diagnostics(every=5, ntk_every=30))
    s = result.summary
    assert s["stayed_local"], s
    assert s["fitted_rate"] <= s["predicted_rate"], s
    assert s["lambda0"] > 0 and s["mu_region_est_final"] > 0
    assert s["pl_certified_along_path"] and s["pl_cert_min"] > 0
    assert s["pl_cert_min"] == min(r for r in result.column("lambda_min_lower") if r == r)
    assert s["envelope_held"] is True and 0 < s["envelope_worst_ratio"] <= 1
    assert s["max_param_drift"] == max(result.column("param_drift"))
    assert "stayed in a locally PL region" in s["verdict"]
    assert "PL certified at every NTK step" in s["verdict"]
    assert "PL envelope held" in s["verdict"]
    assert s["step_size_ok"] == (lr <= 1 / s["beta_est"])


def test_logged_loss_equals_direct_recomputation():
    x, y = data()
    model = wide_mlp()
    lr = safe_lr(model, x, "mean_half", 1)
    result = train(model, x, y, lr=lr, steps=25, diagnostics=Diagnostics(every=1, ntk_every=100))
    with torch.no_grad():
        final = 0.5 * ((model(x) - y) ** 2).sum() / x.shape[0]
    assert math.isclose(result.history[-1]["loss"], float(final), rel_tol=1e-13)
    for t in (0, 7):
        fresh = wide_mlp()
        short = train(fresh, x, y, lr=lr, steps=t, diagnostics=Diagnostics(ntk_every=100))
        assert short.history[-1]["loss"] == result.history[t]["loss"]
        assert short.history[-1]["grad_norm_sq"] == result.history[t]["grad_norm_sq"]


def _reference_run(optimizer: str, tmp_path, steps: int = 40):
    x, y = data(n=16)
    kwargs = dict(optimizer=optimizer, lr=0.05, steps=steps, seed=3,
                  batch_size=4 if optimizer == "sgd" else None,
                  diagnostics=Diagnostics(every=2, ntk_every=10), checkpoint_every=10)  # fmt: skip
    full = train(wide_mlp(width=256), x, y, **kwargs)
    return x, y, kwargs, full


def _same_history(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            va, vb = ra[key], rb[key]
            assert va == vb or (math.isnan(va) and math.isnan(vb)), (ra["step"], key, va, vb)


def _stop_at(step_to_stop: int, exc: type[BaseException] = StopTraining):
    def on_step(step: int) -> None:
        if step == step_to_stop:
            raise exc

    return on_step


@pytest.mark.parametrize("optimizer", ["gd", "sgd"])
@pytest.mark.parametrize("exc", [StopTraining, KeyboardInterrupt])
def test_resume_after_stop_reproduces_history(optimizer, exc, tmp_path):
    x, y, kwargs, full = _reference_run(optimizer, tmp_path)
    first = train(wide_mlp(width=256), x, y, out_dir=tmp_path, on_step=_stop_at(23, exc), **kwargs)
    assert first.summary["status"] == "interrupted at step 23"
    assert [r["step"] for r in first.history][-1] == 22
    assert RunResult.load(tmp_path).history[-1]["step"] == 22
    resumed = train(wide_mlp(width=256), x, y, out_dir=tmp_path, **kwargs)
    _same_history(resumed.history, full.history)
    assert resumed.summary["fitted_rate"] == full.summary["fitted_rate"]


@pytest.mark.parametrize("optimizer", ["gd", "sgd"])
def test_resume_after_crash_reproduces_history(optimizer, tmp_path):
    x, y, kwargs, full = _reference_run(optimizer, tmp_path)
    crash = _stop_at(26, RuntimeError)
    with pytest.raises(RuntimeError):
        train(wide_mlp(width=256), x, y, out_dir=tmp_path, on_step=crash, **kwargs)
    on_disk = RunResult.load(tmp_path)
    assert on_disk.history[-1]["step"] < 20  # written at the step-20 checkpoint
    resumed = train(wide_mlp(width=256), x, y, out_dir=tmp_path, **kwargs)
    _same_history(resumed.history, full.history)
    # a completed run resumed again is a no-op (no file rewritten); a longer one continues
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = train(wide_mlp(width=256), x, y, out_dir=tmp_path, **kwargs)
    _same_history(again.history, full.history)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    longer = train(wide_mlp(width=256), x, y, out_dir=tmp_path, **{**kwargs, "steps": 50})
    _, _, _, full50 = _reference_run(optimizer, tmp_path, steps=50)
    _same_history(longer.history, full50.history)


def test_extending_a_run_matches_the_longer_run_when_the_end_was_not_logged(tmp_path):
    """The last step is always logged; in a longer run the same step may not be. The stored
    maxima must not include it."""
    x, y = data(n=16)
    kwargs = dict(lr=0.05, diagnostics=Diagnostics(every=5, ntk_every=5))
    train(wide_mlp(width=128), x, y, steps=12, out_dir=tmp_path, **kwargs)
    longer = train(wide_mlp(width=128), x, y, steps=20, out_dir=tmp_path, **kwargs)
    direct = train(wide_mlp(width=128), x, y, steps=20, **kwargs)
    assert 12 not in [r["step"] for r in direct.history]
    _same_history(longer.history, direct.history)


def test_auto_lr_is_derived_once_and_reused(tmp_path):
    x, y = data(n=16)
    kwargs = dict(lr="auto", lr_fraction=0.5, steps=12, diagnostics=Diagnostics(ntk_every=4))
    first = train(wide_mlp(width=128), x, y, out_dir=tmp_path, on_step=_stop_at(5), **kwargs)
    derived = (tmp_path / "derived.pt").read_bytes()
    assert first.config["lr_requested"] == "auto" and first.config["lr_fraction"] == 0.5
    assert first.config["lr"] == 0.5 / first.config["beta0_upper"]
    resumed = train(wide_mlp(width=128), x, y, out_dir=tmp_path, **kwargs)
    assert (tmp_path / "derived.pt").read_bytes() == derived
    assert {r["lr"] for r in resumed.history} == {first.config["lr"]}
    assert resumed.history[0]["lambda_max_upper"] == first.config["beta0_upper"]
    with pytest.raises(ValueError, match="differs in lr_fraction"):
        train(wide_mlp(width=128), x, y, out_dir=tmp_path, **{**kwargs, "lr_fraction": 0.4})
    with pytest.raises(ValueError, match="differs in lr"):
        train(wide_mlp(width=128), x, y, out_dir=tmp_path, **{**kwargs, "lr": first.config["lr"]})


def test_start_with_a_different_initial_model_is_refused(tmp_path):
    x, y = data(n=16)
    kwargs = dict(lr=0.05, steps=6, diagnostics=Diagnostics(ntk_every=3))
    train(wide_mlp(width=64), x, y, out_dir=tmp_path, on_step=_stop_at(0), **kwargs)
    (tmp_path / "checkpoint.pt").unlink()  # as if killed after deriving, before a checkpoint
    with pytest.raises(ValueError, match="initial model"):
        train(wide_mlp(width=64, seed=1), x, y, out_dir=tmp_path, **kwargs)
    done = train(wide_mlp(width=64), x, y, out_dir=tmp_path, **kwargs)
    assert done.summary["status"] == "completed"
    with pytest.raises(ValueError, match="cannot shrink"):
        train(wide_mlp(width=64), x, y, out_dir=tmp_path, **{**kwargs, "steps": 4})


def test_files_written_and_readable(tmp_path):
    x, y = data()
    result = train(wide_mlp(width=128), x, y, lr=0.05, steps=12, out_dir=tmp_path,
                   diagnostics=Diagnostics(every=3, ntk_every=6))  # fmt: skip
    names = {p.name for p in tmp_path.iterdir()}
    assert {"history.csv", "history.json", "summary.csv", "summary.json", "config.json",
            "checkpoint.pt"} <= names  # fmt: skip
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 9, 12]
    assert float(rows[2]["loss"]) == result.history[2]["loss"]
    assert rows[1]["lambda_min_lower"] == "" and rows[2]["lambda_min_lower"] != ""
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("lambda0", "pl_envelope", "fitted_rate", "fit_r2", "predicted_rate",
                "max_param_drift", "L_theta_est", "mu_region_est_final", "step_size_ok",
                "stayed_local", "pl_cert_min", "pl_certified_along_path", "envelope_held",
                "envelope_worst_ratio", "verdict"):  # fmt: skip
        assert key in summary
    loaded = RunResult.load(tmp_path)
    _same_history(loaded.history, result.history)


def test_diverging_run_is_marked(tmp_path):
    x, y = data()
    result = train(wide_mlp(width=128), x, y, lr=1e4, steps=200, out_dir=tmp_path,
                   diagnostics=Diagnostics(every=10, ntk_every=50))  # fmt: skip
    assert result.summary["status"].startswith("diverged at step")
    assert "diverged" in result.summary["verdict"]
    assert not math.isfinite(result.history[-1]["loss"])
    assert len(result.history) >= 1 and result.history[0]["step"] == 0
    assert RunResult.load(tmp_path).summary["status"] == result.summary["status"]


def test_subset_and_trace_are_labelled():
    x, y = data(k=2)
    diagnostics = Diagnostics(ntk_every=2, ntk_subset=5, ntk_compute="trace")
    result = train(wide_mlp(k=2, width=128), x, y, lr=0.05, steps=4, diagnostics=diagnostics)
    assert result.config["ntk_samples"] == 5
    assert result.summary["pl_bounds_comparable"] is False
    assert result.summary["pl_certified_along_path"] is False
    assert math.isnan(result.summary["pl_cert_min"]) and result.summary["envelope_held"] is None
    assert "PL not certified: the NTK is a subset or trace kernel" in result.summary["verdict"]
    assert math.isfinite(result.history[0]["lambda_min_lower"])


def test_trace_kernel_run_claims_nothing_certified(tmp_path):
    """Review 13 items 2 and 4: a trace-kernel run's λ_min (0.086 here) lies above the actual
    PL ratio (0.065); the plot labelled it the certified PL constant, drew the envelope as
    certified, and the rate was predicted from it. Labels follow the summary's basis test."""
    from lplr_fast.models import MLP
    from lplr_fast.training.plot import figure_labels, plot_run

    torch.manual_seed(0)
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randn(10, 3, dtype=torch.float64)
    model = MLP(6, [32], 3, "tanh").double()
    diagnostics = Diagnostics(every=1, ntk_every=10, ntk_compute="trace")
    result = train(model, x, y, lr="auto", steps=40, diagnostics=diagnostics, out_dir=tmp_path)
    s = result.summary
    above = [
        r for r in result.history if r.get("lambda_min_lower", math.nan) > r["pl_ratio"]
    ]  # the trace kernel's λ_min is no lower bound of the PL ratio: it does exceed it
    assert above, "the reproducer no longer shows a trace λ_min above the PL ratio"
    assert s["pl_cert_basis"].startswith("the NTK is a subset or trace kernel")
    assert math.isnan(s["predicted_rate"]) and s["beta_certified"] is False
    assert "β̂ an estimate" in s["verdict"] and "predicted" not in s["verdict"].split("rate")[-1]
    labels = figure_labels(RunResult.load(tmp_path))
    assert labels["envelope"] is None
    for key in ("band", "lambda_min", "mu_title"):
        assert "certified PL constant at" not in labels[key]
        assert "not a certified" in labels[key] or "neither certified" in labels[key]
    pytest.importorskip("matplotlib")
    assert len(plot_run(tmp_path)) == 4
    # the full kernel on the same problem: certified labels and an envelope
    full = train(model, x, y, lr="auto", steps=10, diagnostics=Diagnostics(ntk_every=5),
                 out_dir=tmp_path / "full")  # fmt: skip
    labels = figure_labels(RunResult.load(tmp_path / "full"))
    assert full.summary["beta_certified"] is True and math.isfinite(full.summary["predicted_rate"])
    assert labels["lambda_min"].startswith("certified") and "μ_s certified" in labels["envelope"]


def test_finite_blow_up_is_diverged_not_completed():
    """Review 13 item 5: a loss that rises to 1e164 but stays finite was "completed"."""
    x, y = data()
    result = train(wide_mlp(width=64), x, y, lr=60.0, steps=30,
                   diagnostics=Diagnostics(every=5, ntk_every=10))  # fmt: skip
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] > losses[0]
    assert result.summary["status"].startswith("diverged (finite)"), result.summary["status"]
    assert result.summary["verdict"].startswith("diverged (finite)")
    ok = train(wide_mlp(width=64), x, y, lr=safe_lr(wide_mlp(width=64), x, "mean_half", 1),
               steps=30, diagnostics=Diagnostics(every=5, ntk_every=10))  # fmt: skip
    assert ok.summary["status"] == "completed"


def test_bad_input():
    x, y = data()
    model = wide_mlp(width=32)
    with pytest.raises(ValueError, match="12 samples but y has 11"):
        train(model, x, y[:11], lr=0.1, steps=1)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        train(model, bad, y, lr=0.1, steps=1)
    for lr in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="lr must be"):
            train(model, x, y, lr=lr, steps=1)
    with pytest.raises(ValueError, match="output per sample"):
        train(model, x, torch.zeros(12, 3, dtype=torch.float64), lr=0.1, steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        train(model, x, y, optimizer="sgd", lr=0.1, steps=1)
    with pytest.raises(ValueError, match="full batch"):
        train(model, x, y, lr=0.1, steps=1, batch_size=3)
    with pytest.raises(ValueError, match="optimizer"):
        train(model, x, y, optimizer="adam", lr=0.1, steps=1)
    with pytest.raises(ValueError, match="loss must be"):
        train(model, x, y, lr=0.1, steps=1, loss="l1")
    with pytest.raises(ValueError, match="ntk_every"):
        Diagnostics(ntk_every=0)
    with pytest.raises(ValueError, match="stable_window"):
        Diagnostics(stable_window=(5, 2))
    bn = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double().train()
    with pytest.raises(ValueError, match="BatchNorm"):
        train(bn, x, y, lr=0.1, steps=1)


def test_resume_refuses_a_different_run(tmp_path):
    x, y = data()
    train(wide_mlp(width=32), x, y, lr=0.1, steps=3, out_dir=tmp_path)
    with pytest.raises(ValueError, match="differs in lr"):
        train(wide_mlp(width=32), x, y, lr=0.2, steps=3, out_dir=tmp_path)
    fresh = train(wide_mlp(width=32), x, y, lr=0.2, steps=3, out_dir=tmp_path, resume=False)
    assert fresh.config["lr"] == 0.2


def test_cli_train_and_plot(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        "[data]\nn = 10\n[model]\nwidth = 64\n[train]\nsteps = 8\n"
        "[diagnostics]\nevery = 2\nntk_every = 4\n"
    )
    out = tmp_path / "run"
    assert cli_main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    assert RunResult.load(out).history[-1]["step"] == 8
    pytest.importorskip("matplotlib")
    assert cli_main(["plot", str(out)]) == 0
    for name in ("suboptimality.png", "pl_ratio.png", "drift.png", "mu_region_est.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_and_run_folder_errors(tmp_path, capsys):
    """Progress is a tqdm bar; a run folder that belongs to another run is a RunFolderError
    whose command-line message names CLI options, not resume=False (review 13 item 7)."""
    from lplr_fast.training import RunFolderError

    x, y = data()
    train(wide_mlp(width=32), x, y, lr=0.1, steps=6, out_dir=tmp_path / "a", progress=True,
          diagnostics=Diagnostics(every=2, ntk_every=6))  # fmt: skip
    err = capsys.readouterr().err
    assert "train: 100%" in err and "6/6" in err and "loss" in err
    with pytest.raises(RunFolderError, match="belongs to a different run") as info:
        train(wide_mlp(width=32), x, 2 * y, lr=0.1, steps=6, out_dir=tmp_path / "a")
    assert "resume=False" in str(info.value) and "resume=False" not in info.value.reason
    config = tmp_path / "run.toml"
    config.write_text("[data]\nn = 10\n[model]\nwidth = 16\n[train]\nsteps = 4\n")
    assert cli_main(["train", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    config.write_text("[data]\nn = 12\n[model]\nwidth = 16\n[train]\nsteps = 4\n")
    capsys.readouterr()
    assert cli_main(["train", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "use another --out" in err and "resume=False" not in err


def test_cli_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    assert cli_main(["train", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[train]\nsteps = "many"\n')
    assert cli_main(["train", str(wrong), "--out", str(tmp_path / "c")]) == 2
    assert "wrong type" in capsys.readouterr().err
    section = tmp_path / "section.toml"
    section.write_text("[optimizer]\nlr = 1\n")
    assert cli_main(["train", str(section), "--out", str(tmp_path / "d")]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert cli_main(["train", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2
    assert cli_main(["plot", str(tmp_path / "nothing")]) == 2


def test_a_run_folder_in_use_is_refused(tmp_path):
    x, y = data(n=8)
    kwargs = dict(lr=0.05, steps=2, out_dir=tmp_path, diagnostics=Diagnostics(ntk_every=2))
    seen = []

    def nested(step: int) -> None:
        if step == 1 and not seen:  # a second run of the same folder while the first runs
            with pytest.raises(RunFolderInUseError, match="in use by another running process"):
                train(wide_mlp(width=32), x, y, **kwargs)
            seen.append(step)

    # flock locks are per open file description: the nested call opens its own, so it is
    # refused exactly as another process would be
    done = train(wide_mlp(width=32), x, y, on_step=nested, **kwargs)
    assert seen == [1] and done.summary["status"] == "completed"


def test_numpy_numbers_and_resume_false(tmp_path):
    import numpy as np

    x, y = data(n=8)
    kwargs = dict(steps=3, out_dir=tmp_path, diagnostics=Diagnostics(ntk_every=3))
    first = train(wide_mlp(width=32), x, y, lr=np.float64(0.05), momentum=np.float32(0.5),
                  **kwargs)  # fmt: skip
    again = train(wide_mlp(width=32), x, y, lr=0.05, momentum=0.5, **kwargs)
    _same_history(again.history, first.history)
    other = train(wide_mlp(width=32), x, y, lr=0.02, resume=False, **kwargs)
    assert RunResult.load(tmp_path).config["lr"] == other.config["lr"] == 0.02


def test_cli_device_errors(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[data]\nn = 6\n[model]\nwidth = 8\n[train]\nsteps = 1\n")
    args = ["train", str(config), "--out", str(tmp_path / "a"), "--device"]
    assert cli_main([*args, "tpu"]) == 2
    assert "--device must be cpu or cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main([*args, "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_packaged_example_config_is_found_by_name(tmp_path, capsys):
    from lplr_fast.training.runconfig import example_configs, load_config

    assert "teacher" in example_configs()
    assert load_config("teacher")["train"]["lr"] == "auto"
    assert cli_main(["train", "no-such-example", "--out", str(tmp_path)]) == 2
    assert "packaged examples ['teacher'" in capsys.readouterr().err


@pytest.mark.cuda
def test_training_on_cuda_stays_there_and_matches_cpu(tmp_path):
    x, y = data(n=12)
    kwargs = dict(lr="auto", steps=10, diagnostics=Diagnostics(every=1, ntk_every=5))
    on_cpu = train(wide_mlp(width=256), x, y, **kwargs)
    model = wide_mlp(width=256).cuda()
    on_gpu = train(model, x, y, out_dir=tmp_path, on_step=_stop_at(6), **kwargs)
    assert next(model.parameters()).is_cuda
    on_gpu = train(wide_mlp(width=256).cuda(), x, y, out_dir=tmp_path, **kwargs)
    for a, b in zip(on_cpu.history, on_gpu.history, strict=True):
        for key in ("loss", "grad_norm_sq", "lambda_min_lower", "lambda_max_upper"):
            if key in a and a[key] == a[key]:
                assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-12), (key, a, b)
