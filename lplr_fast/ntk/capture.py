"""Forward/backward capture: what every parametrised module saw and the cotangents of
all k network outputs at its output, from one forward and k backward passes over a block."""

from __future__ import annotations

import contextlib
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


def forward_with_cotangents(
    model: nn.Module, x: torch.Tensor, capture: Capture
) -> tuple[torch.Tensor, list[ModuleUse]]:
    """Run ``model(x)`` with ``capture`` installed and fill every use's cotangents.

    Returns the outputs flattened per sample, (n, k), and the uses in call order. The k
    cotangents come from k backward passes over the whole block (graph retained).
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
    # (n, k, ...) per use, filled output by output (no list of k copies to stack)
    grads = [t.new_zeros((t.shape[0], k, *t.shape[1:])) for t in tensors]
    for c in range(k):
        parts = torch.autograd.grad(
            flat[:, c].sum(), tensors, retain_graph=c + 1 < k, allow_unused=True
        )
        for dest, part in zip(grads, parts, strict=True):
            if part is not None:
                dest[:, c] = part
    for use, grad in zip(uses, grads, strict=True):
        use.grad = grad
        use.output = None
    return flat.detach(), uses
