"""GD/SGD on a squared loss with LPLR diagnostics logged step by step (see DESIGN.md §1).

Loss normalisations (``loss=``), with r = f(X) − Y: "mean_half" L = ‖r‖²/(2n), "sum_half"
L = ‖r‖²/2, "mse" L = ‖r‖²/(n·k). Writing L = s·½‖r‖², ∇L = s·Jᵀr, so the PL ratio
‖∇L‖² / (2(L − L*)) = s·rᵀΘr/‖r‖² (for L* = 0) lies in [s·λ_min(Θ), s·λ_max(Θ)]: the λ and
drift columns are reported on that scale (λ(Θ)/n for "mean_half").

A run is: its identity and derived values (``state.py``), a :class:`RunState` changed by
:func:`step.take_step`, and a :class:`Checkpointer` that stores both in the run folder.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..ntk.validation import check_model, trainable_parameters
from ..spectrum import as_matrix, eig_bounds
from .analysis import summarise
from .checkpoint import Checkpointer, RunFolderError
from .config import LOSSES, Diagnostics, loss_scale
from .parallel import SingleProcess, current
from .progress import Progress
from .result import RunResult
from .state import (
    Derived,
    RunState,
    StopTraining,
    data_fingerprint,
    flat_parameters,
    model_signature,
    model_state_digest,
    plain,
    require_reloadable_extra_state,
    same_parameters,
)
from .step import StepContext, bounds_dict, diagnostic_kernel, kernel_bounds, take_step

OnStep = Callable[[int], None]


def _validate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: str,
    lr: float | str,
    lr_fraction: float,
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
    if lr != "auto" and not (
        isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    ):
        raise ValueError(f"lr must be a positive finite number or 'auto', got {lr!r}")
    if not (isinstance(lr_fraction, int | float) and 0 < lr_fraction < math.inf):
        raise ValueError(f"lr_fraction must be a positive finite number, got {lr_fraction!r}")
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


def _real(value: Any, name: str) -> float:
    """A real number (numpy scalars included) as a Python float."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a real number, got {value!r}")


def _integer(value: Any, name: str) -> int:
    """An integer (numpy integers included) as a Python int."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{name} must be an integer, got {value!r}")


def _subset(diag: Diagnostics, n: int, seed: int) -> torch.Tensor:
    """Indices (CPU, sorted for an int) of the samples the NTK diagnostics use."""
    if diag.ntk_subset is None:
        return torch.arange(n)
    if isinstance(diag.ntk_subset, int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
        return order[: min(n, diag.ntk_subset)].sort().values
    subset = torch.as_tensor(diag.ntk_subset, dtype=torch.long)
    if subset.numel() == 0 or int(subset.min()) < 0 or int(subset.max()) >= n:
        raise ValueError(f"Diagnostics.ntk_subset indices must lie in [0, {n})")
    return subset


def _derive(
    ctx_model: nn.Module,
    params: list[torch.Tensor],
    x: torch.Tensor,
    subset: torch.Tensor,
    k: int,
    diag: Diagnostics,
    loss: str,
    lr: float | str,
    lr_fraction: float,
    parallel: SingleProcess,
) -> Derived:
    """θ₀, Θ₀ on the diagnostic samples with its bounds, β₀ and the step size (see
    ``state.Derived``), from the model as it is now (its initial state)."""
    scale = loss_scale(loss, subset.numel(), k)
    a0 = diagnostic_kernel(ctx_model, x[subset], diag, scale, parallel)
    if not bool(torch.isfinite(a0).all()):
        raise ValueError("the model's NTK at initialisation is not finite")
    bounds0 = bounds_dict(kernel_bounds(a0, diag))
    same_kernel = diag.ntk_compute == "full" and subset.numel() == x.shape[0]
    if same_kernel and diag.bounds == "certified":
        beta0 = bounds0["lambda_max_upper"]
    else:  # β₀ of the whole training set's full kernel, certified
        full = as_matrix(parallel.kernel(ctx_model, x, "full"))
        beta0 = eig_bounds(full * loss_scale(loss, x.shape[0], k), which=("max",)).lambda_max_upper
    lr_used = lr_fraction / beta0 if lr == "auto" else float(lr)
    if not (math.isfinite(lr_used) and lr_used > 0):
        raise ValueError(f"lr='auto' resolved to {lr_used} (β₀ = {beta0})")
    return Derived(flat_parameters(params), a0, bounds0, lr_used, beta0)


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the run stops at the next step boundary, after a
    checkpoint); a second one raises KeyboardInterrupt at once (no checkpoint)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        sys.stderr.write("\nstopping after this step (Ctrl-C again aborts without a checkpoint)\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: Literal["gd", "sgd"] = "gd",
    lr: float | Literal["auto"],
    steps: int,
    lr_fraction: float = 0.9,
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
    on_step: OnStep | None = None,
) -> RunResult:
    """Train ``model`` in place on (x, y) by full-batch GD or mini-batch SGD, logging the
    LPLR diagnostics.

    Args:
        model: maps x (n, ...) to outputs with as many values per sample as y; trainable
            parameters are those with requires_grad. No train-mode BatchNorm or Dropout.
            Training, NTKs and bounds run on the model's device (x and y are moved there).
        x: (n, ...) inputs; y: (n, ...) float targets.
        optimizer: "gd" (full batch) or "sgd" (``batch_size`` samples per step, drawn
            without replacement within an epoch from a generator seeded by ``seed``).
        lr: step size η > 0, or "auto" = ``lr_fraction`` / β₀ with β₀ the certified upper
            end of λ_max(Θ₀) on the PL scale (computed once, stored in the run folder).
        steps: number of updates; momentum: heavy-ball coefficient.
        loss: "mean_half" | "sum_half" | "mse" (module docstring); l_star: the optimal loss
            L* used in the PL ratio and the suboptimality.
        diagnostics: what to log (default ``Diagnostics()``).
        out_dir: write history/summary (CSV + JSON) and a checkpoint there as the run goes,
            atomically. With ``resume=True`` an existing run of the same identity (same data,
            same initial model bitwise, same arguments as given; ``steps`` may grow) is
            continued from its last checkpoint, and a finished one is returned unchanged
            (nothing is recomputed); a folder of another run is refused before anything is
            loaded into ``model``.
        checkpoint_every: steps between checkpoints (default ``diagnostics.ntk_every``).
        progress: show a progress bar (tqdm: steps, ETA, latest loss and PL ratio) on stderr.
        on_step: called with the step index at the start of every step, before anything of
            that step is computed. Raising :class:`StopTraining` (or KeyboardInterrupt)
            there stops the run like Ctrl-C; any other exception aborts it like a crash (the
            run folder keeps its last checkpoint).

    Returns:
        A :class:`RunResult`. A diverging run (non-finite loss) stops and is marked in the
        summary. Ctrl-C stops at the next step boundary after writing a checkpoint and
        returns the partial result (status "interrupted at step t"); a second Ctrl-C aborts
        at once. Same inputs, machine and thread count → bitwise the same history, whether
        the run was interrupted and resumed or not.

    Under torch.distributed (e.g. ``torchrun --nproc_per_node=N``, a process group of two or
    more ranks initialised) every rank calls ``train`` with the same arguments and the run
    is data-parallel (``lplr_fast.distributed.training``): each loss is split over the
    ranks and the gradients all-reduced, NTK diagnostics use the distributed tile stream,
    only rank 0 writes ``out_dir``, and every rank returns the same result.
    """
    diag = diagnostics or Diagnostics()
    lr = lr if lr == "auto" else _real(lr, "lr")
    lr_fraction, momentum, l_star = (
        _real(lr_fraction, "lr_fraction"), _real(momentum, "momentum"), _real(l_star, "l_star")
    )  # fmt: skip
    steps, seed = _integer(steps, "steps"), _integer(seed, "seed")
    batch_size = None if batch_size is None else _integer(batch_size, "batch_size")
    params_by_name = trainable_parameters(model)
    params = list(params_by_name.values())
    if not params:
        raise ValueError("the model has no trainable parameters")
    initial_state = model_state_digest(model)  # before anything could touch the model
    if out_dir is not None:  # every rank: they all hold the same model
        require_reloadable_extra_state(model)
    device = params[0].device
    x, y = x.to(device), y.to(device)
    k = _validate(
        model, x, y, optimizer, lr, lr_fraction, steps, batch_size, momentum, loss, l_star
    )
    every_ckpt = checkpoint_every or diag.ntk_every
    if not isinstance(every_ckpt, int) or every_ckpt < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
    subset = _subset(diag, x.shape[0], seed)
    requested = {
        "optimizer": optimizer, "lr": lr, "lr_fraction": lr_fraction if lr == "auto" else None,
        "steps": steps, "batch_size": batch_size, "momentum": momentum, "loss": loss,
        "l_star": l_star, "seed": seed, "diagnostics": diag.to_dict(),
        "checkpoint_every": every_ckpt,
    }  # fmt: skip
    identity = _identity(requested, x, y, k, subset, params_by_name, initial_state)
    parallel = current()
    parallel.agree((identity, flat_parameters(params).cpu()), "run (arguments, data, model)")
    opt = torch.optim.SGD(params, lr=1.0, momentum=momentum)  # lr set once derived
    gen = torch.Generator().manual_seed(seed)
    writes = out_dir is not None and parallel.writes
    store = Checkpointer(out_dir, identity, device) if writes else None
    with store.locked() if store is not None else contextlib.nullcontext():
        state, derived = _start(store, resume, model, params, opt, gen, parallel)
        if state is not None and _finished(state, steps):
            return _result(state, identity, derived, diag, out_dir)  # nothing to do
        if derived is None:
            derived = _derive(model, params, x, subset, k, diag, loss, lr, lr_fraction, parallel)
            if store is not None:
                store.save_derived(derived)
        for group in opt.param_groups:
            group["lr"] = derived.lr
        ctx = StepContext(
            model, params, opt, gen, x, y.reshape(-1, k).to(dtype=params[0].dtype),
            subset.to(device), optimizer, batch_size, loss, l_star, steps, diag, derived,
            parallel,
        )  # fmt: skip
        state = _resumable(state, steps, store.out if store is not None else None)
        _run(ctx, state, store, every_ckpt, progress, on_step, identity)
        return _result(state, identity, derived, diag, out_dir)


def _identity(
    requested: dict[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    subset: torch.Tensor,
    params: dict[str, torch.Tensor],
    initial_state: str,
) -> dict[str, Any]:
    """The run's identity (``state.py``): the arguments as requested, and what identifies
    the data and the initial model (``initial_state``: :func:`model_state_digest`)."""
    return plain(
        {
            **requested,
            "n": x.shape[0],
            "k": k,
            "ntk_samples": subset.numel(),
            "data_fingerprint": data_fingerprint(x, y),
            "model": model_signature(params),
            "model_state": initial_state,
            "eps": torch.finfo(next(iter(params.values())).dtype).eps,
        }
    )


def _finished(state: RunState, steps: int) -> bool:
    """A diverged run, or a completed one asked for no more steps, is returned as stored."""
    return state.status.startswith("diverged") or (
        state.status == "completed" and steps == state.next_step
    )


def _start(
    store: Checkpointer | None,
    resume: bool,
    model: nn.Module,
    params: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    parallel: SingleProcess,
) -> tuple[RunState | None, Derived | None]:
    """The saved state and derived values to continue from (None, None for a fresh run);
    the model, optimizer and generator are restored in place. With several processes rank 0
    reads the folder and the others receive what it found."""
    if parallel.world > 1:
        found = _load_start(store, resume, model, params, opt, gen) if parallel.writes else None
        found = parallel.share(_to_cpu(found))
        if isinstance(found, Exception):
            raise found
        if found is None:
            return None, None
        state, derived, saved = found
        if saved is not None and not parallel.writes:
            _restore(saved, model, opt, gen)
        device = params[0].device
        if derived is not None:
            derived = Derived(**{
                k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(derived).items()
            })  # fmt: skip
        return state, derived
    found = _read_start(store, resume, model, params, opt, gen)
    return (None, None) if found is None else (found[0], found[1])


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it moved to the CPU (to share it between ranks)."""
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, Derived | RunState):
        return type(value)(**{k: _to_cpu(v) for k, v in vars(value).items()})
    return value


def _restore(saved: dict[str, Any], model: nn.Module, opt, gen: torch.Generator) -> None:
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    gen.set_state(saved["generator"].cpu())


def _load_start(
    store: Checkpointer | None,
    resume: bool,
    model: nn.Module,
    params: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
) -> Any:
    """(state, derived, saved checkpoint) from the folder, None for a fresh run, or the
    error that reading it raised (returned, so that rank 0 can share it before raising)."""
    try:
        return _read_start(store, resume, model, params, opt, gen)
    except (ValueError, RuntimeError, OSError) as exc:
        return exc


def _read_start(store, resume, model, params, opt, gen):
    if store is None:
        return None
    store.open()
    if not resume:
        store.start_over()
        return None
    derived = store.load_derived()
    saved = store.load_checkpoint()
    if saved is None:
        if derived is not None and not same_parameters(params, derived.theta0):
            raise RunFolderError(
                f"{store.out} holds the start of this run but the model's parameters differ "
                "from its initial ones (pass the same initial model)",
                store.out,
            )
        return None, derived, None
    _restore(saved, model, opt, gen)
    return saved["state"], derived, saved


def _resumable(state: RunState | None, steps: int, folder: Path | None) -> RunState:
    """The state to run from: a fresh one, or the saved one without the rows of steps that
    will be computed again (a completed run extended to more steps continues)."""
    if state is None:
        return RunState()
    if state.next_step > steps:
        raise RunFolderError(
            f"the run in {folder} is already at step {state.next_step}; steps={steps} cannot "
            "shrink it",
            Path(folder or "."),
        )
    state.history = [r for r in state.history if r["step"] < state.next_step]
    state.status = "running"
    return state


def _run(
    ctx: StepContext,
    state: RunState,
    store: Checkpointer | None,
    every_ckpt: int,
    progress: bool,
    on_step: OnStep | None,
    identity: dict[str, Any],
) -> None:
    """Steps from ``state.next_step`` until the run ends or is stopped; checkpoints at step
    boundaries. On return ``state`` is the state to store and report."""
    start = state.next_step
    bar = Progress(ctx.steps, progress and ctx.parallel.writes, start)

    def checkpoint(saved: RunState) -> None:
        if store is None:
            return
        # results first: a checkpoint that says "completed" is never newer than the files
        # that a rerun of the finished run (a no-op) leaves in place
        _result(saved, identity, ctx.derived, ctx.diag, store.out).write(store.out)
        store.save_checkpoint(
            saved, ctx.model.state_dict(), ctx.optimizer.state_dict(), ctx.generator.get_state()
        )

    with _stop_on_sigint() as stop_requested:
        for step in range(start, ctx.steps + 1):
            state.next_step = step
            stop = False
            try:
                if stop_requested.is_set():
                    raise StopTraining
                if on_step is not None:
                    on_step(step)
            except (StopTraining, KeyboardInterrupt):
                stop = True
            if ctx.parallel.any(stop):  # every process stops at the same step
                state.status = f"interrupted at step {step}"
                break
            if step > start and step % every_ckpt == 0:
                checkpoint(state)
            maxima = (state.r_max, state.l_hat)
            outcome = take_step(ctx, state, step)
            if state.history and state.history[-1]["step"] == step:
                row = state.history[-1]
                bar.update(step, row["loss"], row["pl_ratio"], force=step == ctx.steps)
            if outcome.status is not None:
                # stored as at the start of this step plus its row: an extended run
                # recomputes the row and goes on exactly as an uninterrupted longer run
                state.r_max, state.l_hat = maxima
                state.status = outcome.status
                break
    bar.close()
    checkpoint(state)


def _result(
    state: RunState,
    identity: dict[str, Any],
    derived: Derived | None,
    diag: Diagnostics,
    out: str | Path | None,
) -> RunResult:
    config = {**identity, "lr_requested": identity["lr"]}
    config["lr"] = derived.lr if derived is not None else math.nan
    config["beta0_upper"] = derived.beta0_upper if derived is not None else math.nan
    status = state.status
    if state.history:
        summary = summarise(
            state.history,
            lr=config["lr"],
            l_star=config["l_star"],
            eps=config["eps"],
            window=diag.stable_window,
            status=status,
            pl_comparable=diag.ntk_subset is None
            and (diag.ntk_compute == "full" or config["k"] == 1),
            certified=diag.bounds == "certified",
            plain_gd=config["optimizer"] == "gd" and config["momentum"] == 0,
        )
    else:
        summary = {"status": status, "verdict": status}
    return RunResult(list(state.history), summary, config, Path(out) if out else None)
