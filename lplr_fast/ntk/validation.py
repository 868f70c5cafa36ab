"""Input validation and model-state guards for the NTK engine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

BATCHNORM_OPTIONS = ("error", "eval", "batch")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters the NTK differentiates (requires_grad=True), by qualified name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def train_mode_batchnorms(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules in training mode (they couple the samples of a batch)."""
    return [
        name or "<root>"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def active_dropouts(model: nn.Module) -> list[str]:
    return [
        name or "<root>"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]


def check_model(model: nn.Module, batchnorm: str) -> None:
    """Raise a clear error for models whose per-sample NTK is undefined or empty."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if batchnorm not in BATCHNORM_OPTIONS:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_OPTIONS}, got {batchnorm!r}")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True): its NTK is zero")
    for name, p in params.items():
        if not torch.is_floating_point(p):
            raise TypeError(f"parameter {name!r} has non-floating dtype {p.dtype}")
        if not torch.isfinite(p).all():
            raise ValueError(f"parameter {name!r} contains NaN or Inf")
    dropouts = active_dropouts(model)
    if dropouts:
        raise ValueError(
            f"dropout module(s) {dropouts} are in training mode: the network is random and its "
            "NTK is undefined. Call model.eval() (or set p=0) before computing the NTK."
        )
    bns = train_mode_batchnorms(model)
    if bns and batchnorm == "error":
        raise ValueError(
            f"BatchNorm module(s) {bns} are in training mode: they couple the samples of a batch, "
            "so the per-sample NTK is undefined. Pass batchnorm='eval' to use the running "
            "statistics (the model is left untouched), batchnorm='batch' for the exact "
            "batch-coupled kernel (slow), or call model.eval()."
        )


def check_inputs(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None) -> None:
    """Shapes, dtypes, devices and finiteness of the inputs."""
    has_embedding = any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in model.modules())
    device = next(iter(trainable_parameters(model).values())).device
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(
                f"{name} must have a non-empty leading batch axis, got {tuple(x.shape)}"
            )
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but the model's parameters are on {device}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        if not torch.is_floating_point(x):
            if not has_embedding:
                raise TypeError(
                    f"{name} has integer dtype {x.dtype} but the model has no nn.Embedding; "
                    "pass floating-point inputs"
                )
        elif not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if x2 is not None:
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(
                f"x1 and x2 have different per-sample shapes {tuple(x1.shape[1:])} and "
                f"{tuple(x2.shape[1:])}"
            )
        if x1.dtype != x2.dtype:
            raise TypeError(f"x1 has dtype {x1.dtype} but x2 has dtype {x2.dtype}")


@contextlib.contextmanager
def batchnorms_in_eval(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Temporarily put train-mode BatchNorms in eval mode; flags are restored on exit."""
    switched = []
    if enabled:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                m.eval()
                switched.append(m)
    try:
        yield
    finally:
        for m in switched:
            m.train()
