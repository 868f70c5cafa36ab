"""The ``lplr-fast train`` job: build data and model from a config, train, write the run."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import DATASETS, load_dataset
from ..demo import build_mlp
from .config import Diagnostics
from .loop import train
from .result import RunResult
from .runconfig import ConfigError, load_config


def run_from_config(
    config_path: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    device: str = "cpu",
) -> RunResult:
    """Run (or resume, or return the finished) training described by a TOML config (a path
    or the name of a packaged example) into ``out_dir``, on ``device`` ("cpu" | "cuda" |
    "cuda:N")."""
    cfg = load_config(config_path)
    target = _device(device)
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
    x = x.reshape(x.shape[0], -1).to(target)
    y = y.reshape(y.shape[0], -1).to(target)
    with torch.random.fork_rng(devices=[]):  # the initialisation, seeded, on the CPU
        torch.manual_seed(model_cfg["seed"])
        model = build_mlp(x.shape[1], model_cfg["width"], model_cfg["depth"], y.shape[1])
    model = model.to(dtype=dtype, device=target)
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
        lr=tr["lr"],
        lr_fraction=tr["lr_fraction"],
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


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (torch.cuda)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda[:N], got {name!r}")
    return device
