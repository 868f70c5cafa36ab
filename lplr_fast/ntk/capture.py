"""Forward/backward capture: what every parametrised module saw and the cotangents of
all k network outputs at its output, from one forward pass and batched backward passes over
the output basis of a block."""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModuleUse:
    """One call of a module that owns trainable parameters.

    ``args``/``kwargs`` are detached copies of its inputs (batch axis first); ``output`` is
    the graph-connected output, later replaced by the cotangents ``grad`` of shape
    ``(n, k, *output.shape[1:])``: grad[i, c] = ∂ f_c(x_i) / ∂ output_i.
    """

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor | None
    grad: torch.Tensor | None = None


@dataclass
class Capture:
    """Hooks on the parametrised modules of a model. ``paused`` silences them while the
    engine re-runs a module itself (per-sample gradients of a fallback module)."""

    modules: dict[str, nn.Module]
    uses: list[ModuleUse] = field(default_factory=list)
    paused: bool = False

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if self.paused or not torch.is_grad_enabled():
                return None
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"module {name!r} ({type(module).__name__}) returns {type(output).__name__}; "
                    "the NTK engine needs modules with trainable parameters to return one tensor"
                )

            def keep(v: Any) -> Any:
                return v.detach().clone() if isinstance(v, torch.Tensor) else v

            self.uses.append(
                ModuleUse(
                    name,
                    module,
                    tuple(keep(a) for a in args),
                    {key: keep(v) for key, v in kwargs.items()},
                    output,
                )
            )
            # Later in-place ops (ReLU(inplace=True), `out += x`) then hit the copy, not the
            # tensor whose cotangent we ask for.
            return output.clone()

        return hook

    @contextlib.contextmanager
    def installed(self) -> Iterator[Capture]:
        handles = [
            m.register_forward_hook(self._hook(name), with_kwargs=True)
            for name, m in self.modules.items()
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        previous, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = previous


def parametrised_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules owning trainable parameters directly, by name ("" is the root). Raises when one
    parameter is owned by several modules (tied weights): not supported by the structured path."""
    owners: dict[int, str] = {}
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        direct = [p for p in module.parameters(recurse=False) if p.requires_grad]
        for p in direct:
            if id(p) in owners and owners[id(p)] != name:
                raise NotImplementedError(
                    f"a parameter is shared by modules {owners[id(p)]!r} and {name!r} (tied "
                    "weights); the structured path cannot pair them. Use "
                    "implementation='jacobian' or 'ntk_vp'."
                )
            owners[id(p)] = name
        if direct and name not in found:
            found[name] = module
    return found


def total_memory_bytes(device: torch.device) -> int:
    """Total (not free) memory of ``device``: a budget derived from it does not change with the
    machine's current load, so neither do the chunkings (and hence the bits) it selects."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def cotangent_budget_bytes(device: torch.device) -> int:
    """Memory for the batched backward's cotangents of one chunk of outputs: 1/32 of the
    device's total memory, between 64 MiB and 4 GiB."""
    return min(4 << 30, max(64 << 20, total_memory_bytes(device) // 32))


def output_chunk(k: int, bytes_per_output: int, budget_bytes: int) -> int:
    """Outputs per batched backward: chunk·bytes_per_output ≤ budget (at least 1).

    ``bytes_per_output`` is the size of all captured outputs of the block (one cotangent of
    each per output in the chunk, plus as much again for the backward's intermediates)."""
    return max(1, min(k, budget_bytes // max(1, 2 * bytes_per_output)))


# Models whose backward cannot run batched over the output basis (a custom autograd Function
# calling .item(), ops without a vmap rule and no fallback): the k sequential passes are used.
_SEQUENTIAL_MODELS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_BATCHING_ERRORS = ("batching rule", "vmap", "functorch", "batched")


def _is_batching_error(err: Exception) -> bool:
    return isinstance(err, RuntimeError | NotImplementedError) and any(
        word in str(err).lower() for word in _BATCHING_ERRORS
    )


def _batched_cotangents(
    flat: torch.Tensor, tensors: list[torch.Tensor], grads: list[torch.Tensor], chunk: int
) -> None:
    """grads[u][:, c] = ∂ Σ_i flat[i, c] / ∂ tensors[u], one batched backward per chunk of
    outputs (grad_outputs = rows of the identity, vmapped by autograd)."""
    n, k = flat.shape
    basis = torch.eye(k, dtype=flat.dtype, device=flat.device)
    for c0 in range(0, k, chunk):
        c1 = min(k, c0 + chunk)
        seeds = basis[c0:c1].unsqueeze(1).expand(c1 - c0, n, k)
        parts = torch.autograd.grad(
            flat, tensors, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        for dest, part in zip(grads, parts, strict=True):
            if part is not None:
                dest[:, c0:c1] = part.transpose(0, 1)


def _sequential_cotangents(
    flat: torch.Tensor, tensors: list[torch.Tensor], grads: list[torch.Tensor]
) -> None:
    """The same as :func:`_batched_cotangents` with one backward pass per output."""
    k = flat.shape[1]
    for c in range(k):
        parts = torch.autograd.grad(flat[:, c].sum(), tensors, retain_graph=True, allow_unused=True)
        for dest, part in zip(grads, parts, strict=True):
            if part is not None:
                dest[:, c] = part


def forward_with_cotangents(
    model: nn.Module,
    x: torch.Tensor,
    capture: Capture,
    *,
    budget_bytes: int | None = None,
    batched: bool = True,
) -> tuple[torch.Tensor, list[ModuleUse]]:
    """Run ``model(x)`` with ``capture`` installed and fill every use's cotangents.

    Returns the outputs flattened per sample, (n, k), and the uses in call order. The k
    cotangents come from batched backward passes over the output basis, ``chunk`` outputs
    at a time with chunk·(bytes of all captured outputs)·2 ≤ ``budget_bytes`` (default
    :func:`cotangent_budget_bytes`), so k = 1000 runs in bounded memory. Models whose
    backward cannot be batched (detected once per model, with a warning) and
    ``batched=False`` use k sequential backward passes instead; both give the same numbers
    up to rounding.
    """
    capture.uses = []
    with torch.enable_grad(), capture.installed():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model(x) must return a tensor, got {type(out).__name__}")
    n = x.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"model output has leading size {out.shape[0]} but the batch has {n}")
    flat = out.reshape(n, -1)
    k = flat.shape[1]
    uses = capture.uses
    capture.uses = []
    tensors = [u.output for u in uses]
    # (n, k, ...) per use, filled chunk by chunk (no list of k copies to stack)
    grads = [t.new_zeros((t.shape[0], k, *t.shape[1:])) for t in tensors]
    if budget_bytes is None:
        budget_bytes = cotangent_budget_bytes(flat.device)
    per_output = sum(t.numel() * t.element_size() for t in tensors)
    if batched and k > 1 and model not in _SEQUENTIAL_MODELS:
        try:
            _batched_cotangents(flat, tensors, grads, output_chunk(k, per_output, budget_bytes))
        except Exception as err:
            if not _is_batching_error(err):
                raise
            _SEQUENTIAL_MODELS[model] = str(err)
            warnings.warn(
                f"{type(model).__name__}: its backward cannot be batched over the {k} outputs "
                f"({str(err).splitlines()[0]}); using {k} sequential backward passes instead "
                "(same numbers, slower). Said once per model.",
                RuntimeWarning,
                stacklevel=2,
            )
            for g in grads:
                g.zero_()
            _sequential_cotangents(flat, tensors, grads)
    else:
        _sequential_cotangents(flat, tensors, grads)
    for use, grad in zip(uses, grads, strict=True):
        use.grad = grad
        use.output = None
    return flat.detach(), uses
