"""What a run logs and how: :class:`Diagnostics`, and the loss normalisations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

LOSSES = ("mean_half", "sum_half", "mse")

HISTORY_COLUMNS = [
    "step",
    "loss",
    "grad_norm_sq",
    "pl_ratio",
    "param_drift",
    "lr",
    "lambda_min_lower",
    "lambda_min_upper",
    "lambda_max_lower",
    "lambda_max_upper",
    "ntk_drift_op",
    "ntk_drift_fro",
    "lipschitz_est",
    "mu_region_est",
]
SGD_COLUMNS = ["batch_loss", "batch_grad_norm_sq"]


@dataclass(frozen=True)
class Diagnostics:
    """What is logged how often.

    Args:
        every: log the cheap quantities (loss, gradient, PL ratio, drift) every this many
            steps (full-batch values, also for SGD).
        ntk_every: compute the NTK-based quantities every this many steps (and at the first
            and last logged step).
        ntk_subset: None (whole training set), an int m (a fixed random subset of m samples,
            drawn once from the run's seed) or a list of sample indices. The λ columns then
            describe the subset kernel, scaled with m in place of n.
        bounds: "certified" (rigorous brackets, :func:`eig_bounds` method "auto") or "fast"
            (float64 ``eigvalsh`` values, labelled uncertified).
        ntk_compute: "full" (the (n·k)² kernel: the PL invariant λ_min ≤ pl_ratio ≤ λ_max
            holds) or "trace" (Σ_c Θ_cc, n², k² times cheaper; for k > 1 its bounds do not
            bracket the PL ratio, and the results say so).
        stable_window: (first, last) step of the window used for the rate fit and the
            envelopes; None chooses it automatically (see ``analysis.stable_window``).
    """

    every: int = 1
    ntk_every: int = 50
    ntk_subset: int | list[int] | None = None
    bounds: Literal["certified", "fast"] = "certified"
    ntk_compute: Literal["trace", "full"] = "full"
    stable_window: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"Diagnostics.every must be a positive integer, got {self.every!r}")
        if not isinstance(self.ntk_every, int) or self.ntk_every < 1:
            raise ValueError(
                f"Diagnostics.ntk_every must be a positive integer, got {self.ntk_every!r}"
            )
        if self.bounds not in ("certified", "fast"):
            raise ValueError(
                f"Diagnostics.bounds must be 'certified' or 'fast', got {self.bounds!r}"
            )
        if self.ntk_compute not in ("trace", "full"):
            raise ValueError(
                f"Diagnostics.ntk_compute must be 'trace' or 'full', got {self.ntk_compute!r}"
            )
        if isinstance(self.ntk_subset, int) and self.ntk_subset < 1:
            raise ValueError(f"Diagnostics.ntk_subset must be ≥ 1, got {self.ntk_subset}")
        if self.stable_window is not None:
            first, last = self.stable_window
            if first < 0 or last <= first:
                raise ValueError(
                    f"Diagnostics.stable_window must be (first, last) with 0 ≤ first < last, "
                    f"got {self.stable_window}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_scale(loss: str, n: int, k: int) -> float:
    """s with L = s · ½‖f − y‖²: 1/n ("mean_half"), 1 ("sum_half"), 2/(n·k) ("mse")."""
    if loss == "mean_half":
        return 1.0 / n
    if loss == "sum_half":
        return 1.0
    if loss == "mse":
        return 2.0 / (n * k)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def loss_value(residual: torch.Tensor, scale: float) -> torch.Tensor:
    """L = scale · ½ ‖residual‖² (residual = f(X) − Y, any shape)."""
    return 0.5 * scale * (residual * residual).sum()
