"""The ``lplr-fast train`` job: build data and model from a config, train, write the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..data import DATASETS, load_dataset
from ..demo import build_mlp
from ..ntk import empirical_ntk
from ..spectrum import as_matrix, eig_bounds
from .config import Diagnostics, loss_scale
from .loop import train
from .result import RunResult
from .runconfig import ConfigError, load_config


def run_from_config(
    config_path: str | Path, out_dir: str | Path, progress: bool = True
) -> RunResult:
    cfg = load_config(config_path)
    data, model_cfg, tr, dg = cfg["data"], cfg["model"], cfg["train"], cfg["diagnostics"]
    dtype = {"float64": torch.float64, "float32": torch.float32}.get(data["dtype"])
    if dtype is None:
        raise ConfigError(f"[data] dtype must be 'float64' or 'float32', got {data['dtype']!r}")
    if data["path"]:
        x, y = load_dataset(data["path"], dtype=dtype)
    elif data["dataset"] in DATASETS:
        x, y = DATASETS[data["dataset"]](data["n"], seed=data["seed"], dtype=dtype)
    else:
        raise ConfigError(
            f"[data] dataset must be one of {sorted(DATASETS)} (or give path), "
            f"got {data['dataset']!r}"
        )
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    torch.manual_seed(model_cfg["seed"])
    model = build_mlp(x.shape[1], model_cfg["width"], model_cfg["depth"], y.shape[1]).to(dtype)
    lr: Any = tr["lr"]
    if lr == "auto":
        kernel = as_matrix(empirical_ntk(model, x, dtype=torch.float64))
        beta0 = eig_bounds(kernel * loss_scale(tr["loss"], x.shape[0], y.shape[1]), which=("max",))
        lr = tr["lr_fraction"] / beta0.lambda_max_upper
    if not math.isfinite(float(lr)):
        raise ConfigError(f"[train] lr resolved to {lr}")
    window = tuple(dg["stable_window"]) if dg["stable_window"] else None
    diagnostics = Diagnostics(
        every=dg["every"],
        ntk_every=dg["ntk_every"],
        ntk_subset=dg["ntk_subset"] or None,
        bounds=dg["bounds"],
        ntk_compute=dg["ntk_compute"],
        stable_window=window,  # type: ignore[arg-type]
    )
    return train(
        model,
        x,
        y,
        optimizer=tr["optimizer"],
        lr=float(lr),
        steps=tr["steps"],
        batch_size=tr["batch_size"] or None,
        momentum=tr["momentum"],
        loss=tr["loss"],
        l_star=tr["l_star"],
        diagnostics=diagnostics,
        seed=tr["seed"],
        out_dir=out_dir,
        resume=True,
        checkpoint_every=tr["checkpoint_every"] or None,
        progress=progress,
    )
