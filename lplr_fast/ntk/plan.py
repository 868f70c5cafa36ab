"""Which rule computes each trainable parameter's share of the NTK, decided per model and call.

Three routes, all exact:

* ``linear`` / ``conv``: the structured Gram rules of rules.py, for modules whose ``forward``
  is the stock ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` one (subclasses that override it
  do not qualify), without user hooks, holding only ``weight``/``bias``;
* ``attention``: stock ``nn.MultiheadAttention``: its q/k/v in-projections and ``out_proj``
  are sequence Linears and get the Linear Gram rule (attention.py);
* ``module``: per-sample gradients of a module's parameters from the cotangents of its
  outputs (any module, tuple outputs included, e.g. attention and recurrent layers), also for
  parameters of descendants that are never called themselves (``out_proj`` of
  ``nn.MultiheadAttention``);
* ``generic``: per-sample gradients of the whole network's outputs (parameters tied across
  modules, used outside their module's call, behind a parametrization, or in calls whose
  output is shared by all samples).

The batch axis of every input and output of every call is found by two shape probes (the
first sample repeated 2 and 3 times): the axis whose length follows the batch is the batch
axis, an axis that stays fixed is not; calls where this is ambiguous go to ``generic``. The
engine then checks the routing on real samples (``verify_routes``): for random weights w,
the gradient of Σ w_ic f_c(x_i) implied by every module's features must equal autograd's;
parameters that disagree move to ``generic``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .capture import Capture, UseShapes, model_output, parameter_owners, parametrised_modules

BAD = "bad"  # marker: no consistent batch axis


@dataclass
class UseAxes:
    """Batch axis per flattened input leaf and per output leaf of one call (None: the leaf is
    shared by all samples, not a tensor, or carries no gradient)."""

    inputs: list[int | None]
    outputs: list[int | None]
    input_shapes: list[tuple[int, ...] | None]


@dataclass
class Route:
    """How one hooked module's parameters are handled. ``params``: path relative to the
    module → parameter; ``qualified``: the same path → the parameter's name in the model."""

    name: str
    module: nn.Module
    rule: str  # "linear" | "conv" | "attention" | "module"
    params: dict[str, torch.Tensor]
    qualified: dict[str, str]
    uses: list[UseAxes]
    autograd: bool = False  # "module" rule without vmap (per-sample autograd over chunks)


@dataclass
class Plan:
    routes: dict[str, Route]
    generic: dict[str, dict[str, torch.Tensor]]  # part name → {qualified name: parameter}
    reasons: dict[str, str] = field(default_factory=dict)  # qualified name → why generic
    k: int = 0
    # The backward pass couples the samples of a batch (a batch's gradient is not the sum of
    # its samples' gradients): generic features and the probe then run one sample at a time.
    per_sample: bool = False

    def out_axes(self, use: Any) -> list[int | None]:
        route = self.routes[use.name]
        if use.index >= len(route.uses):
            raise RuntimeError(
                f"module {use.name!r} was called {use.index + 1} times in one forward, more than "
                "in the shape probes (all samples alike): the model routes samples to modules "
                "or loops depending on the data, which the structured engine cannot follow. "
                "Use implementation='jacobian' (exact per-sample Jacobians)."
            )
        return route.uses[use.index].outputs

    def parts(self) -> list[str]:
        """Names the kernel's per-module parts are reported under (owners of the parameters)."""
        names = [q.rpartition(".")[0] for r in self.routes.values() for q in r.qualified.values()]
        names += list(self.generic)
        return list(dict.fromkeys(names))

    def move_to_generic(self, qualified: str, param: torch.Tensor, part: str, why: str) -> None:
        for route in list(self.routes.values()):
            for rel, q in list(route.qualified.items()):
                if q == qualified:
                    del route.params[rel], route.qualified[rel]
            if not route.params:
                del self.routes[route.name]
        self.generic.setdefault(part, {})[qualified] = param
        self.reasons[qualified] = why


def _axis(a: tuple[int, ...] | None, b: tuple[int, ...] | None, sa: int, sb: int) -> Any:
    if a is None or b is None:
        return None if a is None and b is None else BAD
    if len(a) != len(b):
        return BAD
    changed = [i for i in range(len(a)) if a[i] != b[i]]
    if not changed:
        return None
    if len(changed) == 1 and a[changed[0]] == sa and b[changed[0]] == sb:
        return changed[0]
    return BAD


SIZES = (2, 3)


def _probe_shapes(
    model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]
) -> tuple[list[dict[str, list[UseShapes]]], int]:
    runs = []
    k = 0
    for size in SIZES:
        xb = x[:1].expand(size, *x.shape[1:]).clone()
        capture = Capture(modules, shapes_only=True)
        with capture.installed():
            flat = model_output(model, xb)
        k = flat.shape[1]
        runs.append(capture.shapes)
    return runs, k


def _use_axes(a: UseShapes, b: UseShapes) -> UseAxes | str:
    if len(a.inputs) != len(b.inputs) or len(a.outputs) != len(b.outputs):
        return "the structure of its inputs or outputs changes with the batch"
    inputs = [_axis(p, q, *SIZES) for p, q in zip(a.inputs, b.inputs, strict=True)]
    outputs = []
    for p, q, tracked in zip(a.outputs, b.outputs, a.tracked, strict=True):
        axis = _axis(p, q, *SIZES)
        if tracked and axis is None:
            return "an output is shared by all samples (no batch axis)"
        outputs.append(axis if tracked else None)
    if BAD in inputs or BAD in outputs:
        return "no consistent batch axis in its inputs or outputs"
    return UseAxes(inputs, outputs, a.inputs)


def _has_user_hooks(m: nn.Module) -> bool:
    hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
    return any(not getattr(h, "lplr_internal", False) for h in hooks)


def _attention_rule_applies(m: nn.Module, uses: list[UseAxes]) -> bool:
    """Stock nn.MultiheadAttention with packed in-projection, no bias_k/bias_v, batched
    (T, n, E) or (n, T, E) query/key/value with the batch where ``batch_first`` says."""
    if not (
        type(m).forward is nn.MultiheadAttention.forward
        and m._qkv_same_embed_dim
        and m.bias_k is None
        and m.bias_v is None
        and not _has_user_hooks(m)
        and not _has_user_hooks(m.out_proj)
    ):
        return False
    axis = 0 if m.batch_first else 1
    return all(
        len(u.input_shapes) >= 3
        and all(
            s is not None and len(s) == 3 and a == axis
            for s, a in zip(u.input_shapes[:3], u.inputs[:3], strict=True)
        )
        for u in uses
    )


def _choose_rule(m: nn.Module, attrs: set[str], uses: list[UseAxes]) -> str:
    if attrs <= {"in_proj_weight", "in_proj_bias"} and _attention_rule_applies(m, uses):
        return "attention"
    if _has_user_hooks(m) or not attrs <= {"weight", "bias"}:
        return "module"
    single_io = all(
        len([a for a in u.input_shapes if a is not None]) == 1
        and len([o for o in u.outputs if o is not None]) == 1
        for u in uses
    )
    if not single_io:
        return "module"
    if type(m).forward is nn.Linear.forward and all(
        u.inputs[0] is not None and u.inputs[0] == next(o for o in u.outputs if o is not None)
        for u in uses
    ):
        return "linear"
    conv_dims = {nn.Conv1d.forward: 3, nn.Conv2d.forward: 4}.get(type(m).forward)
    if (
        conv_dims is not None
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and all(
            u.inputs[0] == 0
            and u.outputs[0] == 0
            and u.input_shapes[0] is not None
            and len(u.input_shapes[0]) == conv_dims
            for u in uses
        )
    ):
        return "conv"
    return "module"


def _nearest_called(name: str, routes: dict[str, Route]) -> Route | None:
    parts = name.split(".") if name else []
    for depth in range(len(parts) - 1, 0, -1):
        route = routes.get(".".join(parts[:depth]))
        if route is not None:
            return route
    return None


def build_plan(model: nn.Module, x: torch.Tensor) -> Plan:
    """Routes for every trainable parameter of ``model`` (run inside the engine's forward
    context). Raises for models whose output is not per sample."""
    modules = parametrised_modules(model)
    owners = parameter_owners(model)
    named_params = {id(p): (n, p) for n, p in model.named_parameters() if p.requires_grad}
    runs, k = _probe_shapes(model, x, modules)
    plan = Plan(routes={}, generic={}, k=k)

    def qualified(module_name: str, attr: str) -> str:
        return f"{module_name}.{attr}" if module_name else attr

    uncalled: list[str] = []
    for name, m in modules.items():
        direct = {
            attr: p
            for attr, p in m._parameters.items()
            if p is not None and p.requires_grad and len(owners[id(p)]) == 1
        }
        for p in m._parameters.values():
            if p is not None and p.requires_grad and len(owners[id(p)]) > 1:
                first = named_params[id(p)][0]
                tied = " and ".join(repr(o[0] or "<root>") for o in owners[id(p)])
                plan.generic.setdefault(first.rpartition(".")[0], {})[first] = p
                plan.reasons[first] = f"tied across modules {tied}"
        if not direct:
            continue
        uses_a, uses_b = runs[0].get(name, []), runs[1].get(name, [])
        why = None
        if not uses_a and not uses_b:
            uncalled.append(name)
            continue
        if len(uses_a) != len(uses_b):
            why = "called a number of times that depends on the batch size"
        else:
            axes = [_use_axes(a, b) for a, b in zip(uses_a, uses_b, strict=True)]
            why = next((a for a in axes if isinstance(a, str)), None)
        if why is not None:
            for attr, p in direct.items():
                plan.move_to_generic(qualified(name, attr), p, name, f"module {name!r}: {why}")
            continue
        rule = _choose_rule(m, set(direct), axes)  # type: ignore[arg-type]
        plan.routes[name] = Route(
            name,
            m,
            rule,
            dict(direct),
            {attr: qualified(name, attr) for attr in direct},
            axes,  # type: ignore[arg-type]
        )
    for name in uncalled:
        m = modules[name]
        host = _nearest_called(name, plan.routes)
        for attr, p in m._parameters.items():
            if p is None or not p.requires_grad or len(owners[id(p)]) > 1:
                continue
            if host is None:
                why = f"module {name!r} is never called: its parameters are used elsewhere"
                plan.move_to_generic(qualified(name, attr), p, name, why)
                continue
            rel = name[len(host.name) + 1 :] if host.name else name
            if not (host.rule == "attention" and rel == "out_proj"):
                host.rule = "module"
            host.params[f"{rel}.{attr}"] = p
            host.qualified[f"{rel}.{attr}"] = qualified(name, attr)
    return plan


__all__ = ["Plan", "Route", "UseAxes", "build_plan"]
