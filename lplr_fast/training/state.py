"""What a training run is (its identity), what is derived from it once, and what changes.

* ``identity``: the run as the user asked for it — arguments as given (``lr = "auto"`` stays
  the string "auto", with its ``lr_fraction``), a digest of the data (x, y: shapes, dtypes,
  bytes), the model's parameter signature and a digest of its initial state (every parameter
  and buffer, bitwise). Two invocations with the same identity are the same run; ``steps``
  may grow.
* :class:`Derived`: the values computed once at the start from the initial model — θ₀, the
  NTK Θ₀ on the diagnostic samples with its eigenvalue bounds, β₀ and the step size that
  ``lr = "auto"`` resolves to. Stored once (atomically) and reused by every resumption, so a
  resumed run never recomputes a derived float that could differ in its last bits.
* :class:`RunState`: what the steps change — the history and the running maxima behind the
  region estimate, the SGD epoch order — plus the step at which the state was taken.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..fingerprint import model_fingerprint

FORMAT = 3  # version of the run-folder files (derived.pt, checkpoint.pt)


class StopTraining(Exception):
    """Raise from an ``on_step`` callback (like Ctrl-C) to stop a run cleanly: the state at
    the start of the current step is checkpointed and the partial result returned."""


# what an identity key stands for, in refusals ("differs in ...")
IDENTITY_KEYS = {
    "data_fingerprint": "the data (x, y)",
    "model_state": "the initial model: its parameters, buffers and its modules' Python state",
    "model": "the model's parameter names, shapes or dtypes",
}


def _update(digest: Any, name: str, t: torch.Tensor) -> None:
    """Feed a tensor's name, shape, dtype and bytes (bitwise, any dtype) to ``digest``."""
    t = t.detach()
    digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 (hex) over the shapes, dtypes and bytes of x and y."""
    digest = hashlib.sha256()
    for name, t in (("x", x), ("y", y)):
        _update(digest, name, t)
    return digest.hexdigest()


def model_state_digest(model: torch.nn.Module) -> str:
    """sha256 (hex) of the model: class, structure, every parameter and buffer (persistent or
    not: name, shape, dtype, bytes), which parameters are trained, and every submodule's
    plain Python state (:func:`lplr_fast.fingerprint.model_fingerprint`). A torch.compile
    wrapper counts as the module it wraps."""
    return model_fingerprint(getattr(model, "_orig_mod", model))


def require_reloadable_extra_state(model: torch.nn.Module) -> None:
    """Refuse, before the first step, a model whose ``get_extra_state()`` returns something a
    checkpoint cannot be reloaded with (checkpoints are read with
    ``torch.load(weights_only=True)``: tensors, numbers, strings and containers of them)."""
    for name, module in model.named_modules():
        if type(module).get_extra_state is torch.nn.Module.get_extra_state:
            continue
        extra = module.get_extra_state()
        buffer = io.BytesIO()
        torch.save(extra, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception as err:  # what weights_only refuses varies with the object
            where, kind = name or type(module).__name__, type(extra).__qualname__
            raise ValueError(
                f"module {where!r}: get_extra_state() returns a {kind!r} object, which "
                "a checkpoint cannot be reloaded with (run files are read with "
                "torch.load(weights_only=True)); return tensors, numbers, strings or "
                "lists/dicts of them, or train without out_dir"
            ) from err


def describe_changes(keys: list[str]) -> str:
    """The identity keys that differ, with what they stand for where that is not obvious."""
    return ", ".join(f"{k} ({IDENTITY_KEYS[k]})" if k in IDENTITY_KEYS else k for k in keys)


def model_signature(params: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every trainable parameter, in order."""
    return [
        (name, tuple(p.shape), str(p.dtype).removeprefix("torch.")) for name, p in params.items()
    ]


def plain(value: Any) -> Any:
    """``value`` with numbers as Python int/float and sequences as lists/tuples of them
    (numpy scalars become Python numbers): what ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    if isinstance(value, bool | str | None):
        return value
    if hasattr(value, "item") and not torch.is_tensor(value):
        return value.item()
    return value


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two identities, ignoring ``steps`` (a run may be
    extended) and ``checkpoint_every`` (it does not change the history)."""
    free = {"steps", "checkpoint_every"}
    keys = (set(old) | set(new)) - free
    return sorted(k for k in keys if old.get(k) != new.get(k))


@dataclass
class Derived:
    """Computed once from the initial model (see module docstring). ``kernel0``: Θ₀ on the
    diagnostic samples, PL scale, as a matrix (or trace kernel); ``bounds0``: its eigenvalue
    brackets (``lambda_min_lower`` ... ``lambda_max_upper``); ``lr``: the step size used."""

    theta0: torch.Tensor
    kernel0: torch.Tensor
    bounds0: dict[str, float]
    lr: float
    beta0_upper: float  # certified λ_max(Θ₀) upper end on the PL scale (whole training set)

    @property
    def lambda0(self) -> float:
        return self.bounds0["lambda_min_lower"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunState:
    """The state at the start of step ``next_step``: the rows logged before it, the largest
    parameter drift and NTK drift ratio seen at logged steps, and the SGD epoch order."""

    next_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    r_max: float = 0.0
    l_hat: float = 0.0
    epoch_order: torch.Tensor | None = None
    epoch_pos: int = 0
    status: str = "running"

    def to_dict(self) -> dict[str, Any]:
        return {
            "next_step": self.next_step,
            "history": [dict(r) for r in self.history],
            "r_max": self.r_max,
            "l_hat": self.l_hat,
            "epoch_order": self.epoch_order,
            "epoch_pos": self.epoch_pos,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunState:
        return cls(**saved)


def flat_parameters(model_params: list[torch.Tensor]) -> torch.Tensor:
    """All parameters as one float64 vector on their device."""
    return torch.cat([p.detach().reshape(-1).double() for p in model_params])


def same_parameters(params: list[torch.Tensor], theta0: torch.Tensor) -> bool:
    """Whether the parameters equal θ₀ bitwise."""
    current = flat_parameters(params)
    return current.shape == theta0.shape and bool(torch.equal(current, theta0.to(current.device)))
