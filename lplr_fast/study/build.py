"""Data and model of one study point, from its configuration sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DATASETS, DatasetNotFoundError, Images, load_images, make_task
from ..models import MLP, ResNetCNN

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class BuiltData:
    """x (n, ...) and y (n, k) on CPU; ``meta`` records the dataset actually used, the one
    asked for, and why any fallback was taken."""

    x: torch.Tensor
    y: torch.Tensor
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


class ImageCache:
    """Loaded image splits, keyed by (dataset, split, data folder), shared by the points of a
    study so each file is read once per process."""

    def __init__(self, data_dir: str | Path | None) -> None:
        self.data_dir = data_dir
        self._images: dict[tuple[str, str], Images] = {}

    def get(self, name: str, split: str) -> Images:
        key = (name, split)
        if key not in self._images:
            self._images[key] = load_images(name, split, self.data_dir)
        return self._images[key]


def _builtin(data: dict[str, Any], name: str, dtype: torch.dtype) -> BuiltData:
    n = data["n_per_class"] * len(data["classes"])
    x, y = DATASETS[name](n, seed=data["seed"], dtype=dtype)
    meta = {"dataset": name, "n": n, "seed": data["seed"], "source": "generated"}
    return BuiltData(x, y, f"{name} (generated), n = {n}, seed {data['seed']}", meta)


def build_data(data: dict[str, Any], flatten: bool, images: ImageCache) -> BuiltData:
    """The task of a [data] section: the first of ``dataset`` and then ``fallback`` whose
    files are present (DatasetNotFoundError listing every place looked if none is)."""
    dtype = _DTYPES[data["dtype"]]
    requested = data["dataset"]
    notes: list[str] = []
    for name in [requested, *data["fallback"]]:
        if name in DATASETS:
            built = _builtin(data, name, dtype)
        else:
            try:
                split = images.get(name, data["split"])
            except DatasetNotFoundError as exc:
                notes.append(str(exc))
                continue
            task = make_task(
                split,
                classes=data["classes"],
                n_per_class=data["n_per_class"],
                target=data["target"],
                seed=data["seed"],
                standardize=data["standardize"],
                flatten=flatten,
                dtype=dtype,
            )
            built = BuiltData(task.x, task.y, task.description, dict(task.meta))
        built.meta["requested"] = requested
        if name != requested:
            built.meta["fallback"] = f"{requested} unavailable, ran on {name}: " + " | ".join(notes)
            built.description = f"FALLBACK to {name} ({requested} not found): {built.description}"
        return built
    raise DatasetNotFoundError(" | ".join(notes))


def dataset_now(data: dict[str, Any], images: ImageCache) -> str | None:
    """The dataset :func:`build_data` would use now: the first of ``dataset`` and then
    ``fallback`` whose files are present (None if none is)."""
    for name in [data["dataset"], *data["fallback"]]:
        if name in DATASETS:
            return name
        try:
            images.get(name, data["split"])
        except DatasetNotFoundError:
            continue
        return name
    return None


def build_model(model: dict[str, Any], x: torch.Tensor, k: int, dtype: torch.dtype) -> nn.Module:
    """The [model] section's network for inputs like ``x`` and k outputs, initialised from
    ``model.seed``; a ResNet with BatchNorm is put in eval mode (fixed affine maps), since
    train-mode BatchNorm couples the samples and has no per-sample NTK."""
    torch.manual_seed(model["seed"])
    if model["kind"] == "mlp":
        net: nn.Module = MLP(
            int(x[0].numel()),
            [model["width"]] * model["depth"],
            k,
            activation=model["activation"],
            parameterization=model["parameterization"],
            bias=model["bias"],
            w_std=model["w_std"],
            b_std=model["b_std"],
        )
    else:
        if x.dim() != 4:
            raise ValueError(
                f"model.kind = 'resnet' needs (n, C, H, W) images, got {tuple(x.shape)}"
            )
        widths = [model["width"] * 2**s for s in range(model["depth"])]
        net = ResNetCNN(x.shape[1], k, widths, model["blocks_per_stage"], model["norm"])
        if model["norm"] == "batch":
            net.eval()
    return net.to(dtype)


def describe_model(model: dict[str, Any], net: nn.Module, x: torch.Tensor, k: int) -> str:
    params = sum(p.numel() for p in net.parameters())
    if model["kind"] == "mlp":
        widths = "→".join([str(x[0].numel())] + [str(model["width"])] * model["depth"] + [str(k)])
        return f"MLP {widths} {model['activation']} ({model['parameterization']}), P = {params:,}"
    widths = [model["width"] * 2**s for s in range(model["depth"])]
    return (
        f"ResNetCNN widths {widths} × {model['blocks_per_stage']} block(s), norm "
        f"{model['norm']}, P = {params:,}"
    )
