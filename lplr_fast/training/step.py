"""One training step with its diagnostics: the step function and pure row builders.

The row builders take numbers and return a history row; they change nothing. The step
function computes those numbers on the model's device (only logged scalars leave it),
updates the :class:`RunState` explicitly and takes the optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..spectrum import SpectrumBounds, as_matrix, eig_bounds, ntk_distance
from .config import Diagnostics, loss_scale, loss_value
from .parallel import SingleProcess
from .state import Derived, RunState, flat_parameters

BOUND_KEYS = ("lambda_min_lower", "lambda_min_upper", "lambda_max_lower", "lambda_max_upper")


@dataclass(frozen=True)
class StepContext:
    """Everything a step reads and never changes: model, data (on the model's device),
    optimizer settings, diagnostics and the derived values."""

    model: nn.Module
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    x: torch.Tensor
    y: torch.Tensor  # (n, k) in the model's dtype
    subset: torch.Tensor  # sample indices of the NTK diagnostics, on the model's device
    kind: str  # "gd" | "sgd"
    batch_size: int | None
    loss: str
    l_star: float
    steps: int
    diag: Diagnostics
    derived: Derived
    parallel: SingleProcess = field(default_factory=SingleProcess)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def k(self) -> int:
        return self.y.shape[1]


# -- pure row builders ---------------------------------------------------------------------
def cheap_row(
    step: int, loss: float, grad_sq: float, l_star: float, lr: float, drift: float
) -> dict[str, Any]:
    """The quantities logged at every logged step."""
    sub = loss - l_star
    return {
        "step": step,
        "loss": loss,
        "grad_norm_sq": grad_sq,
        "pl_ratio": grad_sq / (2 * sub) if sub > 0 else math.nan,
        "param_drift": drift,
        "lr": lr,
    }


def ntk_row(
    bounds: dict[str, float],
    drift_op: float,
    drift_fro: float,
    param_drift: float,
    lambda0: float,
    l_hat: float,
    r_max: float,
) -> dict[str, Any]:
    """The NTK quantities of one NTK step: the bracket of λ(Θ_t) (PL scale; its lower end
    is a certified PL constant at this iterate), the NTK drift, the drift ratio
    ‖Θ_t − Θ₀‖/‖θ_t − θ₀‖ and the region estimate μ̂ = λ₀ − L̂·r (an optimistic estimate)
    with L̂ and r the largest ratio and drift seen so far (this step included)."""
    return {
        **{key: bounds[key] for key in BOUND_KEYS},
        "ntk_drift_op": drift_op,
        "ntk_drift_fro": drift_fro,
        "lipschitz_est": drift_ratio(drift_op, param_drift),
        "mu_region_est": lambda0 - l_hat * r_max,
    }


def drift_ratio(drift_op: float, param_drift: float) -> float:
    return drift_op / param_drift if param_drift > 0 else math.nan


def bounds_dict(b: SpectrumBounds) -> dict[str, float]:
    return {key: float(getattr(b, key)) for key in BOUND_KEYS}


# -- kernels -------------------------------------------------------------------------------
def diagnostic_kernel(
    model: nn.Module,
    xs: torch.Tensor,
    diag: Diagnostics,
    scale: float,
    parallel: SingleProcess | None = None,
):
    """Θ on the diagnostic samples, float64, PL scale: a matrix ("full") or trace kernel
    (computed by all processes of ``parallel``, the same on each)."""
    kernel = (parallel or SingleProcess()).kernel(model, xs, diag.ntk_compute)
    return (as_matrix(kernel) if diag.ntk_compute == "full" else kernel) * scale


def kernel_bounds(a: torch.Tensor, diag: Diagnostics) -> SpectrumBounds:
    return eig_bounds(a, certify=diag.bounds == "certified")


# -- the step --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepOutcome:
    """``updated``: the optimizer step was taken (the parameters changed); ``status``: set
    when the run ends at this step ("completed", "diverged at step t ...")."""

    updated: bool
    status: str | None = None


def _grad_sq(params: list[torch.Tensor]) -> float:
    total = sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)
    return float(total)


def _loss_and_grad(ctx: StepContext, idx: torch.Tensor | None) -> float:
    """The loss over the samples ``idx`` (all when None) with its gradient left in the
    parameters; each process runs its share of the samples and the shares are summed."""
    ctx.optimizer.zero_grad(set_to_none=True)
    count = ctx.n if idx is None else len(idx)
    scale = loss_scale(ctx.loss, count, ctx.k)
    rows = ctx.parallel.rows(count)
    value = torch.zeros((), dtype=ctx.y.dtype, device=ctx.y.device)
    if rows.stop > rows.start:
        sel = rows if idx is None else idx[rows]
        value = loss_value(ctx.model(ctx.x[sel]).reshape(-1, ctx.k) - ctx.y[sel], scale)
        value.backward()
    return ctx.parallel.reduce_loss_and_grads(value, ctx.params)


def _full_batch(ctx: StepContext, want_grad_sq: bool) -> tuple[float, float]:
    """Full-batch loss and (when wanted, else NaN) ‖∇L‖², leaving the gradient in the
    parameters. Only these scalars leave the device."""
    value = _loss_and_grad(ctx, None)
    return value, _grad_sq(ctx.params) if want_grad_sq else math.nan


def _ntk_columns(ctx: StepContext, state: RunState, step: int, drift: float) -> dict[str, Any]:
    derived = ctx.derived
    if step == 0:  # Θ₀ and its bounds were derived once from this very model
        a, bounds = derived.kernel0, derived.bounds0
    else:
        scale = loss_scale(ctx.loss, ctx.subset.numel(), ctx.k)
        a = diagnostic_kernel(ctx.model, ctx.x[ctx.subset], ctx.diag, scale, ctx.parallel)
        bounds = bounds_dict(kernel_bounds(a, ctx.diag))
    drift_op = ntk_distance(derived.kernel0, a).value
    drift_fro = ntk_distance(derived.kernel0, a, "fro").value
    ratio = drift_ratio(drift_op, drift)
    if math.isfinite(ratio):
        state.l_hat = max(state.l_hat, ratio)
    return ntk_row(bounds, drift_op, drift_fro, drift, derived.lambda0, state.l_hat, state.r_max)


def _next_batch(ctx: StepContext, state: RunState) -> torch.Tensor:
    """The next mini-batch: consecutive slices of a fresh permutation per epoch (drawn on
    the CPU from the run's generator, so every device sees the same batches)."""
    b = ctx.batch_size
    assert b is not None
    if state.epoch_order is None or state.epoch_pos + b > ctx.n:
        state.epoch_order, state.epoch_pos = torch.randperm(ctx.n, generator=ctx.generator), 0
    idx = state.epoch_order[state.epoch_pos : state.epoch_pos + b]
    state.epoch_pos += b
    return idx.to(ctx.x.device)


def take_step(ctx: StepContext, state: RunState, step: int) -> StepOutcome:
    """Log step ``step`` (when due) and take the optimizer step, unless the run ends here.
    Appends the row to ``state.history`` and updates ``state``'s running maxima."""
    diag = ctx.diag
    log = step % diag.every == 0 or step == ctx.steps
    ntk_now = log and (step % diag.ntk_every == 0 or step == ctx.steps or not state.history)
    full_loss = grad_sq = math.nan
    if ctx.kind == "gd" or log:
        full_loss, grad_sq = _full_batch(ctx, want_grad_sq=log)
    diverged = (ctx.kind == "gd" or log) and not math.isfinite(full_loss)
    if log or diverged:
        drift = float((flat_parameters(ctx.params) - ctx.derived.theta0).norm())
        state.r_max = max(state.r_max, drift)
        row = cheap_row(step, full_loss, grad_sq, ctx.l_star, ctx.derived.lr, drift)
        if ntk_now and not diverged:
            row.update(_ntk_columns(ctx, state, step, drift))
        state.history.append(row)
    if diverged:
        return StepOutcome(False, f"diverged at step {step}")
    if step == ctx.steps:
        return StepOutcome(False, "completed")
    if ctx.kind == "sgd":
        idx = _next_batch(ctx, state)
        batch_loss = _loss_and_grad(ctx, idx)
        if log:
            state.history[-1]["batch_loss"] = batch_loss
            state.history[-1]["batch_grad_norm_sq"] = _grad_sq(ctx.params)
        if not math.isfinite(batch_loss):
            return StepOutcome(False, f"diverged at step {step} (mini-batch loss)")
    ctx.optimizer.step()
    return StepOutcome(True)
