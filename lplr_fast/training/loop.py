"""GD/SGD on a squared loss with LPLR diagnostics logged step by step (see DESIGN.md §1).

Loss normalisations (``loss=``), with r = f(X) − Y: "mean_half" L = ‖r‖²/(2n), "sum_half"
L = ‖r‖²/2, "mse" L = ‖r‖²/(n·k). Writing L = s·½‖r‖², ∇L = s·Jᵀr, so the PL ratio
‖∇L‖² / (2(L − L*)) = s·rᵀΘr/‖r‖² (for L* = 0) lies in [s·λ_min(Θ), s·λ_max(Θ)]: the λ and
drift columns are reported on that scale (λ(Θ)/n for "mean_half").
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..ntk.engine import empirical_ntk
from ..ntk.validation import check_model, trainable_parameters
from ..spectrum import as_matrix, eig_bounds, ntk_distance
from .analysis import summarise
from .config import LOSSES, Diagnostics, loss_scale, loss_value
from .io import atomic_torch_save
from .result import CHECKPOINT, RunResult


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in (x, y):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().double().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _validate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: str,
    lr: float,
    steps: int,
    batch_size: int | None,
    momentum: float,
    loss: str,
    l_star: float,
) -> int:
    """Checks the arguments; returns k (outputs per sample)."""
    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise TypeError("x and y must be tensors")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.shape[0] < 1:
        raise ValueError("x is empty")
    for name, t in (("x", x), ("y", y)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")
    if not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor (squared loss), got {y.dtype}")
    if optimizer not in ("gd", "sgd"):
        raise ValueError(f"optimizer must be 'gd' or 'sgd', got {optimizer!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not math.isfinite(l_star):
        raise ValueError(f"l_star must be finite, got {l_star!r}")
    if optimizer == "sgd":
        if batch_size is None or not 1 <= batch_size <= x.shape[0]:
            raise ValueError(
                f"optimizer='sgd' needs 1 ≤ batch_size ≤ {x.shape[0]}, got {batch_size!r}"
            )
    elif batch_size not in (None, x.shape[0]):
        raise ValueError("optimizer='gd' uses the full batch; leave batch_size=None")
    check_model(model, "error")
    with torch.no_grad():
        out = model(x[:1])
    if out.numel() != y[:1].numel():
        raise ValueError(
            f"the model's output per sample has shape {tuple(out.shape[1:])} but y's has "
            f"{tuple(y.shape[1:])}; they must hold the same number of values"
        )
    return out.numel()


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.t0 = self.last = time.monotonic()
        self.first_step: int | None = None

    def update(self, step: int, loss: float, pl: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = step
        if not force and now - self.last < 0.5:
            return
        self.last = now
        done = step - self.first_step
        eta = (now - self.t0) / done * (self.total - step) if done > 0 else math.nan
        eta_s = f"{eta:6.0f}s" if math.isfinite(eta) else "     ?"
        width = 24
        filled = int(width * step / max(self.total, 1))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} "
            f"loss {loss:.4e} pl {pl:.3e} ETA {eta_s}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _grad_sq(params: list[torch.Tensor]) -> float:
    return float(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: Literal["gd", "sgd"] = "gd",
    lr: float,
    steps: int,
    batch_size: int | None = None,
    momentum: float = 0.0,
    loss: Literal["mean_half", "sum_half", "mse"] = "mean_half",
    l_star: float = 0.0,
    diagnostics: Diagnostics | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = True,
    checkpoint_every: int | None = None,
    progress: bool = False,
) -> RunResult:
    """Train ``model`` in place on (x, y) by full-batch GD or mini-batch SGD, logging the
    LPLR diagnostics.

    Args:
        model: maps x (n, ...) to outputs with as many values per sample as y; trainable
            parameters are those with requires_grad. No train-mode BatchNorm or Dropout.
        x: (n, ...) inputs; y: (n, ...) float targets.
        optimizer: "gd" (full batch) or "sgd" (``batch_size`` samples per step, drawn
            without replacement within an epoch from a generator seeded by ``seed``).
        lr: step size η > 0; steps: number of updates; momentum: heavy-ball coefficient.
        loss: "mean_half" | "sum_half" | "mse" (module docstring); l_star: the optimal loss
            L* used in the PL ratio and the suboptimality.
        diagnostics: what to log (default ``Diagnostics()``).
        out_dir: write history/summary (CSV + JSON) and a checkpoint there as the run goes,
            atomically; with ``resume=True`` an existing checkpoint of the same run (same
            data and arguments; ``steps`` may grow) is continued instead of restarted.
        checkpoint_every: steps between checkpoints (default ``diagnostics.ntk_every``).
        progress: show a progress line (step, loss, PL ratio, ETA) on stderr.

    Returns:
        A :class:`RunResult`. A diverging run (non-finite loss) stops and is marked in the
        summary; Ctrl-C stops after writing a checkpoint and returns the partial result
        (status "interrupted at step t").
    """
    diag = diagnostics or Diagnostics()
    k = _validate(model, x, y, optimizer, lr, steps, batch_size, momentum, loss, l_star)
    n = x.shape[0]
    yk = y.reshape(n, k).to(dtype=next(model.parameters()).dtype)
    params = list(trainable_parameters(model).values())
    scale = loss_scale(loss, n, k)
    every_ckpt = checkpoint_every or diag.ntk_every
    if every_ckpt < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
    gen = torch.Generator().manual_seed(seed)
    if diag.ntk_subset is None:
        subset = torch.arange(n)
    elif isinstance(diag.ntk_subset, int):
        subset = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
        subset = subset[: min(n, diag.ntk_subset)].sort().values
    else:
        subset = torch.as_tensor(diag.ntk_subset, dtype=torch.long)
        if subset.numel() == 0 or int(subset.min()) < 0 or int(subset.max()) >= n:
            raise ValueError(f"Diagnostics.ntk_subset indices must lie in [0, {n})")
    m = subset.numel()
    ntk_scale = loss_scale(loss, m, k)
    config: dict[str, Any] = {
        "optimizer": optimizer,
        "lr": lr,
        "steps": steps,
        "batch_size": batch_size,
        "momentum": momentum,
        "loss": loss,
        "l_star": l_star,
        "seed": seed,
        "diagnostics": diag.to_dict(),
        "n": n,
        "k": k,
        "ntk_samples": m,
        "data_fingerprint": _fingerprint(x, y),
        "checkpoint_every": every_ckpt,
        "eps": torch.finfo(yk.dtype).eps,
    }
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    out = Path(out_dir) if out_dir is not None else None
    state: dict[str, Any] = {
        "theta0": _flat(params),
        "kernel0": None,
        "lambda0": math.nan,
        "r_max": 0.0,
        "l_hat": 0.0,
        "history": [],
        "epoch_order": None,
        "epoch_pos": 0,
    }
    start = 0
    if out is not None and resume and (out / CHECKPOINT).is_file():
        start = _restore(out / CHECKPOINT, config, model, opt, gen, state)

    def checkpoint(next_step: int) -> None:
        if out is None:
            return
        atomic_torch_save(
            out / CHECKPOINT,
            {
                "config": config,
                "next_step": next_step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
                **state,
            },
        )
        _result(state["history"], config, diag, status, out).write(out)

    history: list[dict[str, Any]] = state["history"]
    status = "completed"
    bar = _Progress(steps, progress)
    step = start
    updated = False
    try:
        for step in range(start, steps + 1):
            updated = False
            if step > start and step % every_ckpt == 0:
                checkpoint(step)
            log = step % diag.every == 0 or step == steps
            ntk_now = log and (step % diag.ntk_every == 0 or step == steps or not history)
            full_loss = grad_sq = math.nan
            if optimizer == "gd" or log:
                opt.zero_grad(set_to_none=True)
                value = loss_value(model(x).reshape(n, k) - yk, scale)
                value.backward()
                full_loss = float(value.detach())
                grad_sq = _grad_sq(params)
            diverged = (optimizer == "gd" or log) and not math.isfinite(full_loss)
            if log or diverged:
                row = _cheap_row(step, full_loss, grad_sq, l_star, lr, params, state)
                if ntk_now and not diverged:
                    row.update(_ntk_row(model, x[subset], diag, ntk_scale, row, state))
                history.append(row)
                bar.update(step, full_loss, row["pl_ratio"], force=step == steps)
            if diverged:
                status = f"diverged at step {step}"
                break
            if step == steps:
                break
            if optimizer == "sgd":
                idx = _next_batch(state, n, batch_size, gen)  # type: ignore[arg-type]
                opt.zero_grad(set_to_none=True)
                xb, yb = x[idx], yk[idx]
                batch = loss_value(
                    model(xb).reshape(len(idx), k) - yb, loss_scale(loss, len(idx), k)
                )
                batch.backward()
                if log:
                    history[-1]["batch_loss"] = float(batch.detach())
                    history[-1]["batch_grad_norm_sq"] = _grad_sq(params)
                if not math.isfinite(float(batch.detach())):
                    status = f"diverged at step {step} (mini-batch loss)"
                    break
            opt.step()
            updated = True
        next_step = step  # resuming recomputes this last row (identically) before going on
    except KeyboardInterrupt:
        if not updated:  # the step had not changed the parameters yet: redo it on resume
            while history and history[-1]["step"] >= step:
                history.pop()
            next_step = step
        else:
            next_step = step + 1
        status = f"interrupted at step {next_step}"
    bar.close()
    checkpoint(next_step)
    return _result(history, config, diag, status, out)


def _result(
    history: list[dict[str, Any]],
    config: dict[str, Any],
    diag: Diagnostics,
    status: str,
    out: Path | None,
) -> RunResult:
    if history:
        summary = summarise(
            history,
            lr=config["lr"],
            l_star=config["l_star"],
            eps=config["eps"],
            window=diag.stable_window,
            status=status,
            pl_comparable=diag.ntk_subset is None
            and (diag.ntk_compute == "full" or config["k"] == 1),
        )
    else:
        summary = {"status": status, "verdict": status}
    return RunResult(list(history), summary, config, out)


def _next_batch(state: dict[str, Any], n: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """The next mini-batch: consecutive slices of a fresh permutation per epoch."""
    order, pos = state["epoch_order"], state["epoch_pos"]
    if order is None or pos + b > n:
        order, pos = torch.randperm(n, generator=gen), 0
    state["epoch_order"], state["epoch_pos"] = order, pos + b
    return order[pos : pos + b]


def _cheap_row(
    step: int,
    loss: float,
    grad_sq: float,
    l_star: float,
    lr: float,
    params: list[torch.Tensor],
    state: dict[str, Any],
) -> dict[str, Any]:
    sub = loss - l_star
    drift = float((_flat(params) - state["theta0"]).norm())
    state["r_max"] = max(state["r_max"], drift)
    return {
        "step": step,
        "loss": loss,
        "grad_norm_sq": grad_sq,
        "pl_ratio": grad_sq / (2 * sub) if sub > 0 else math.nan,
        "param_drift": drift,
        "lr": lr,
    }


def _ntk_row(
    model: nn.Module,
    xs: torch.Tensor,
    diag: Diagnostics,
    ntk_scale: float,
    row: dict[str, Any],
    state: dict[str, Any],
) -> dict[str, Any]:
    kernel = empirical_ntk(model, xs, compute=diag.ntk_compute, dtype=torch.float64)
    a = (as_matrix(kernel) if diag.ntk_compute == "full" else kernel) * ntk_scale
    b = eig_bounds(a, certify=diag.bounds == "certified")
    if state["kernel0"] is None:
        state["kernel0"] = a.clone()
        state["lambda0"] = b.lambda_min_lower
    op = ntk_distance(state["kernel0"], a)
    fro = ntk_distance(state["kernel0"], a, "fro")
    drift = row["param_drift"]
    lip = op.value / drift if drift > 0 else math.nan
    if math.isfinite(lip):
        state["l_hat"] = max(state["l_hat"], lip)
    return {
        "lambda_min_lower": b.lambda_min_lower,
        "lambda_min_upper": b.lambda_min_upper,
        "lambda_max_lower": b.lambda_max_lower,
        "lambda_max_upper": b.lambda_max_upper,
        "ntk_drift_op": op.value,
        "ntk_drift_fro": fro.value,
        "lipschitz_est": lip,
        "mu_cert": state["lambda0"] - state["l_hat"] * state["r_max"],
    }


def _restore(
    path: Path,
    config: dict[str, Any],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    state: dict[str, Any],
) -> int:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    old = {k: v for k, v in saved["config"].items() if k != "steps"}
    new = {k: v for k, v in config.items() if k != "steps"}
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(
            f"{path} belongs to a different run (differs in {', '.join(changed)}); use another "
            "out_dir or resume=False to start over"
        )
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    gen.set_state(saved["generator"])
    for key in state:
        state[key] = saved[key]
    next_step = int(saved["next_step"])
    state["history"] = [r for r in state["history"] if r["step"] < next_step]
    return next_step
