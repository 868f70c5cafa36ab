"""Forward/backward capture: what every parametrised module saw and the cotangents of
all k network outputs at its output, from one forward pass and batched backward passes over
the output basis of a block."""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    return pytree.tree_flatten(tree)


def _keep(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


@dataclass
class ModuleUse:
    """One call of a hooked module.

    ``args``/``kwargs`` are detached copies of its inputs. ``outputs`` are the graph-connected
    tensor leaves of its output (flattened pytree; None for leaves that carry no gradient),
    later replaced by ``grads``: per leaf, the cotangents of all k network outputs with the
    leaf's batch axis moved to the front, (n, k, *rest): grads[l][i, c] = ∂ f_c(x_i) / ∂ leaf_i.
    ``index`` counts the module's calls within one forward (0 for the first).
    """

    name: str
    module: nn.Module
    index: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[torch.Tensor | None]
    grads: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def grad(self) -> torch.Tensor:
        """The cotangents of the single tracked output leaf (modules with one tensor output)."""
        tracked = [g for g in self.grads if g is not None]
        if len(tracked) != 1:
            raise ValueError(f"module {self.name!r} has {len(tracked)} differentiable outputs")
        return tracked[0]


@dataclass
class UseShapes:
    """Shapes seen at one call (shape probes): per flattened input leaf and output leaf, the
    shape of a tensor leaf or None; ``tracked``: output leaves that carry gradients."""

    inputs: list[tuple[int, ...] | None]
    outputs: list[tuple[int, ...] | None]
    tracked: list[bool]


@dataclass
class Capture:
    """Hooks on the given modules of a model. ``shapes_only`` records :class:`UseShapes` per
    (name, call) instead of uses (shape probes). ``paused`` silences the hooks."""

    modules: dict[str, nn.Module]
    uses: list[ModuleUse] = field(default_factory=list)
    shapes: dict[str, list[UseShapes]] = field(default_factory=dict)
    shapes_only: bool = False
    paused: bool = False
    _calls: dict[str, int] = field(default_factory=dict)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if self.paused or not torch.is_grad_enabled():
                return None
            leaves, spec = _flatten(output)
            tracked = [isinstance(v, torch.Tensor) and v.requires_grad for v in leaves]
            index = self._calls.get(name, 0)
            self._calls[name] = index + 1
            if self.shapes_only:
                inputs, _ = _flatten((args, kwargs))
                self.shapes.setdefault(name, []).append(
                    UseShapes(
                        [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in inputs],
                        [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in leaves],
                        tracked,
                    )
                )
                return None
            outputs = [v if t else None for v, t in zip(leaves, tracked, strict=True)]
            self.uses.append(
                ModuleUse(
                    name,
                    module,
                    index,
                    pytree.tree_map(_keep, args),
                    pytree.tree_map(_keep, kwargs),
                    outputs,
                )
            )
            if not any(tracked):
                return None
            # Later in-place ops (ReLU(inplace=True), `out += x`) then hit the copy, not the
            # tensor whose cotangent we ask for.
            clones = [v.clone() if t else v for v, t in zip(leaves, tracked, strict=True)]
            return pytree.tree_unflatten(clones, spec)

        return hook

    @contextlib.contextmanager
    def installed(self) -> Iterator[Capture]:
        self._calls = {}
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


def unique_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module once (a module registered under several names keeps its first name)."""
    return dict(model.named_modules())


def parameter_owners(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """id(trainable parameter) → [(module name, attribute)] of every module holding it
    directly (one entry, unless the parameter is tied across modules)."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for name, module in unique_modules(model).items():
        for attr, p in module._parameters.items():
            if p is not None and p.requires_grad:
                owners.setdefault(id(p), []).append((name, attr))
    return owners


def parametrised_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules owning trainable parameters directly, by (first) name; "" is the root."""
    named = unique_modules(model)
    return {
        name: m
        for name, m in named.items()
        if any(p is not None and p.requires_grad for p in m._parameters.values())
    }


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


def is_batching_error(err: Exception) -> bool:
    return isinstance(err, RuntimeError | NotImplementedError) and any(
        word in str(err).lower() for word in _BATCHING_ERRORS
    )


@contextlib.contextmanager
def quiet_vmap() -> Iterator[None]:
    """Silence torch's "performance drop ... batching rule" notes inside the engine's own
    batched passes (they fall back to a loop inside torch; the numbers are the same)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


def _batched_cotangents(
    flat: torch.Tensor,
    tensors: list[torch.Tensor],
    axes: list[int],
    grads: list[torch.Tensor],
    chunk: int,
) -> None:
    """grads[u][:, c] = ∂ Σ_i flat[i, c] / ∂ tensors[u] (batch axis axes[u] moved to the
    front), one batched backward per chunk of outputs (grad_outputs = rows of the identity,
    vmapped by autograd)."""
    n, k = flat.shape
    basis = torch.eye(k, dtype=flat.dtype, device=flat.device)
    for c0 in range(0, k, chunk):
        c1 = min(k, c0 + chunk)
        seeds = basis[c0:c1].unsqueeze(1).expand(c1 - c0, n, k)
        with quiet_vmap():
            parts = torch.autograd.grad(
                flat, tensors, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        for dest, part, axis in zip(grads, parts, axes, strict=True):
            if part is not None:
                dest[:, c0:c1] = part.movedim(1 + axis, 0)


def _sequential_cotangents(
    flat: torch.Tensor, tensors: list[torch.Tensor], axes: list[int], grads: list[torch.Tensor]
) -> None:
    """The same as :func:`_batched_cotangents` with one backward pass per output."""
    k = flat.shape[1]
    for c in range(k):
        parts = torch.autograd.grad(flat[:, c].sum(), tensors, retain_graph=True, allow_unused=True)
        for dest, part, axis in zip(grads, parts, axes, strict=True):
            if part is not None:
                dest[:, c] = part.movedim(axis, 0)


def batched_vjp(
    outputs: list[torch.Tensor], inputs: list[torch.Tensor], seeds: list[torch.Tensor]
) -> list[torch.Tensor]:
    """For each row r of the seeds: ∂ Σ_o ⟨seeds[o][r], outputs[o]⟩ / ∂ inputs, stacked over r
    (zeros for inputs the outputs do not reach); one batched backward, or a loop where the
    backward cannot be batched."""
    rows = seeds[0].shape[0]
    try:
        with quiet_vmap():
            grads = torch.autograd.grad(
                outputs, inputs, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
    except Exception as err:
        if not is_batching_error(err):
            raise
        per_row = [
            torch.autograd.grad(
                outputs, inputs, [s[r] for s in seeds], retain_graph=True, allow_unused=True
            )
            for r in range(rows)
        ]
        grads = tuple(
            None if per_row[0][i] is None else torch.stack([row[i] for row in per_row])
            for i in range(len(inputs))
        )
    return [
        p.new_zeros((rows, *p.shape)) if gr is None else gr
        for p, gr in zip(inputs, grads, strict=True)
    ]


def first_axis(use: ModuleUse) -> list[int | None]:
    """Batch axis 0 for every tracked output leaf (the layout of plain batch-first modules)."""
    return [None if t is None else 0 for t in use.outputs]


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) flattened per sample to (n, k), with clear errors for unusable outputs. The
    model gets a copy of x (a forward that modifies its input in place leaves the caller's
    tensor alone)."""
    out = model(x.clone())
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model(x) must return a tensor, got {type(out).__name__}")
    n = x.shape[0]
    if out.dim() == 0 or out.shape[0] != n:
        raise ValueError(
            f"model output has shape {tuple(out.shape)} but the batch has {n} samples; the "
            "NTK engine needs outputs (n, ...) with the samples on the first axis"
        )
    if not out.is_floating_point():
        raise TypeError(f"model output has dtype {out.dtype}; it must be floating point")
    return out.reshape(n, -1)


def forward_with_cotangents(
    model: nn.Module,
    x: torch.Tensor,
    capture: Capture,
    *,
    out_axes: Callable[[ModuleUse], list[int | None]] = first_axis,
    budget_bytes: int | None = None,
    batched: bool = True,
) -> tuple[torch.Tensor, list[ModuleUse]]:
    """Run ``model(x)`` with ``capture`` installed and fill every use's cotangents.

    Returns the outputs flattened per sample, (n, k), still connected to the graph (detach
    it once done), and the uses in call order. ``out_axes(use)`` gives the batch axis of each
    output leaf (None: no cotangent wanted). The k cotangents come from batched backward
    passes over the output basis, ``chunk`` outputs at a time with chunk·(bytes of all
    captured outputs)·2 ≤ ``budget_bytes`` (default :func:`cotangent_budget_bytes`), so
    k = 1000 runs in bounded memory. Models whose backward cannot be batched (detected once
    per model, with a warning) and ``batched=False`` use k sequential backward passes
    instead; both give the same numbers up to rounding.
    """
    capture.uses = []
    with torch.enable_grad(), capture.installed():
        flat = model_output(model, x)
    n, k = flat.shape
    uses = capture.uses
    capture.uses = []
    tensors: list[torch.Tensor] = []
    axes: list[int] = []
    grads: list[torch.Tensor] = []
    for use in uses:
        use.grads = []
        for leaf, axis in zip(use.outputs, out_axes(use), strict=True):
            if leaf is None or axis is None:
                use.grads.append(None)
                continue
            if leaf.dim() <= axis or leaf.shape[axis] != n:
                raise RuntimeError(
                    f"module {use.name!r} call {use.index}: output of shape "
                    f"{tuple(leaf.shape)} has no batch axis {axis} of size {n}, although it "
                    f"had one when all samples were alike: the model routes samples to modules "
                    f"depending on the data (e.g. a mixture of experts sending each sample to "
                    f"some experts), which the structured engine cannot follow. Use "
                    f"implementation='jacobian' (exact per-sample Jacobians)."
                )
            rest = leaf.shape[:axis] + leaf.shape[axis + 1 :]
            dest = leaf.new_zeros((n, k, *rest))  # filled chunk by chunk, no k copies to stack
            tensors.append(leaf)
            axes.append(axis)
            grads.append(dest)
            use.grads.append(dest)
        use.outputs = []
    if tensors:
        _fill_cotangents(model, flat, tensors, axes, grads, budget_bytes, batched)
    return flat, uses


def _fill_cotangents(
    model: nn.Module,
    flat: torch.Tensor,
    tensors: list[torch.Tensor],
    axes: list[int],
    grads: list[torch.Tensor],
    budget_bytes: int | None,
    batched: bool,
) -> None:
    k = flat.shape[1]
    if budget_bytes is None:
        budget_bytes = cotangent_budget_bytes(flat.device)
    per_output = sum(t.numel() * t.element_size() for t in tensors)
    if batched and k > 1 and model not in _SEQUENTIAL_MODELS:
        try:
            chunk = output_chunk(k, per_output, budget_bytes)
            _batched_cotangents(flat, tensors, axes, grads, chunk)
            return
        except Exception as err:
            if not is_batching_error(err):
                raise
            _SEQUENTIAL_MODELS[model] = str(err)
            warnings.warn(
                f"{type(model).__name__}: its backward cannot be batched over the {k} outputs "
                f"({str(err).splitlines()[0]}); using {k} sequential backward passes instead "
                "(same numbers, slower). Said once per model.",
                RuntimeWarning,
                stacklevel=3,
            )
            for g in grads:
                g.zero_()
    _sequential_cotangents(flat, tensors, axes, grads)
