"""CLI entry points and the dataset helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lplr_fast.cli import main
from lplr_fast.data import load_dataset, teacher_regression, two_spirals


def test_info_reports_compiled_cpu(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["compiled"] and info["cpu"]


def test_demo_runs_and_checks_reference(capsys):
    assert main(["ntk-check", "--n", "24", "--width", "32"]) == 0
    out = capsys.readouterr().out
    assert "relative error vs reference" in out and "(certified)" in out
    err = float(out.split("relative error vs reference")[1].split()[0])
    assert err < 1e-10


def test_demo_rejects_bad_sizes(capsys):
    assert main(["ntk-check", "--n", "1"]) == 2


def test_builtin_datasets_are_deterministic():
    x1, y1 = two_spirals(50, seed=3)
    x2, y2 = two_spirals(50, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.shape == (50, 2)
    x, y = teacher_regression(40, d=8, k=3)
    assert x.shape == (40, 8) and y.shape == (40, 3) and torch.isfinite(y).all()


def test_load_npz_and_csv(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 3))
    y = np.arange(6.0)[:, None]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    lx, ly = load_dataset(tmp_path / "d.npz")
    assert torch.allclose(lx, torch.as_tensor(x)) and ly.shape == (6, 1)
    (tmp_path / "d.csv").write_text(
        "a,b,c,y\n"
        + "\n".join(",".join(map(str, [*row, t])) for row, t in zip(x, y[:, 0], strict=True))
    )
    cx, cy = load_dataset(tmp_path / "d.csv")
    assert torch.allclose(cx, torch.as_tensor(x)) and torch.allclose(
        cy[:, 0], torch.as_tensor(y[:, 0])
    )


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="lacks arrays"):
        load_dataset(tmp_path / "bad.npz")
    (tmp_path / "d.txt").write_text("1")
    with pytest.raises(ValueError, match="unsupported dataset format"):
        load_dataset(tmp_path / "d.txt")
