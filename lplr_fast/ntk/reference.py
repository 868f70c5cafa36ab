"""Reference NTK implementations users know from the PyTorch tutorial (torch.func):

* ``jacobian``: per-sample Jacobians by ``vmap(jacrev)``, contracted per parameter;
* ``ntk_vp``: NTK-vector products, one VJP on a row sample and one JVP on the column batch
  per output basis vector;
* ``batch``: the batch-coupled kernel of a model with train-mode BatchNorm, J(X) J(X)ᵀ with
  J the Jacobian of the whole batch's outputs (slow, memory n·k·P).

Where torch.func cannot run a model (recurrent layers under vmap, attention without
forward-mode AD, custom autograd Functions without ``setup_context``), both fall back to
per-sample Jacobians from plain reverse-mode autograd (the model run on a few samples at a
time, one batched backward over their (sample, output) seeds), which runs on any model whose
samples do not interact. None of them modifies the model: parameters are passed to
``functional_call`` under every name they are registered as (once per module object, so a
module registered twice is swapped once), buffers as copies.

All return per-module parts (name of the module owning the parameters → kernel) so that the
structured engine's ``return_layers`` can be checked part by part.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .capture import batched_vjp, cotangent_budget_bytes, model_output
from .validation import trainable_parameters


def owner(param_name: str) -> str:
    """Module name owning a parameter ("" for the root)."""
    return param_name.rpartition(".")[0]


def _contract(j1: torch.Tensor, j2: torch.Tensor, compute: str) -> torch.Tensor:
    """j1 (n1, k, P), j2 (n2, k, P) → kernel in the layout of ``compute``."""
    if compute == "full":
        return torch.einsum("iap,jbp->ijab", j1, j2)
    if compute == "trace":
        return torch.einsum("iap,jap->ij", j1, j2)
    return torch.einsum("iap,jap->ija", j1, j2)


def _registered_names(model: nn.Module) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """First name → every name (one per module object holding it) of each trainable
    parameter and of each other tensor (frozen parameters, buffers)."""
    params: dict[int, list[str]] = {}
    others: dict[int, list[str]] = {}
    for mname, module in dict(model.named_modules()).items():
        prefix = f"{mname}." if mname else ""
        for attr, p in module._parameters.items():
            if p is not None:
                (params if p.requires_grad else others).setdefault(id(p), []).append(prefix + attr)
        for attr, b in module._buffers.items():
            if b is not None:
                others.setdefault(id(b), []).append(prefix + attr)
    return {v[0]: v for v in params.values()}, {v[0]: v for v in others.values()}


def functional(
    model: nn.Module,
) -> tuple[
    dict[str, torch.Tensor],
    Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
    Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
]:
    """(θ by first name, f_batch(θ, x) → (n, k), f_single(θ, x_i) → (k,)) for torch.func."""
    trainable = trainable_parameters(model)
    param_names, other_names = _registered_names(model)
    params = {first: trainable[first].detach() for first in param_names}
    fixed: dict[str, torch.Tensor] = {}
    lookup = dict(model.named_parameters(remove_duplicate=False))
    lookup.update(dict(model.named_buffers(remove_duplicate=False)))
    for first, names in other_names.items():
        value = lookup[first].detach().clone()
        fixed.update(dict.fromkeys(names, value))

    def f_batch(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        full = dict(fixed)
        for first, names in param_names.items():
            full.update(dict.fromkeys(names, theta[first]))
        out = functional_call(model, full, (x.clone(),), tie_weights=False)
        return out.reshape(x.shape[0], -1)

    def f_single(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return f_batch(theta, x.unsqueeze(0))[0]

    return params, f_batch, f_single


def autograd_jacobian(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample Jacobians {first name: (n, k, P_param)} by plain reverse-mode autograd on the
    model itself: one sample per forward (so a backward pass that couples the samples of a
    batch, e.g. nn.Embedding(scale_grad_by_freq=True), still gives each sample's own
    gradient), one batched backward over its output seeds. Works on any model whose samples
    do not interact in the forward."""
    named = trainable_parameters(model)
    names, params = list(named), list(named.values())
    pieces: list[list[torch.Tensor]] = []
    for s in range(x.shape[0]):
        with torch.enable_grad():
            flat = model_output(model, x[s : s + 1])
        k = flat.shape[1]
        seed = torch.eye(k, dtype=flat.dtype, device=flat.device).reshape(k, 1, k)
        grads = batched_vjp([flat], params, [seed])
        pieces.append([g.reshape(1, k, -1) for g in grads])
    return {n: torch.cat([piece[i] for piece in pieces]) for i, n in enumerate(names)}


def _group_sum(per_param: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts: dict[str, torch.Tensor] = {}
    for name, value in per_param.items():
        key = owner(name)
        parts[key] = value if key not in parts else parts[key] + value
    return parts


def _jacobian_block_size(model: nn.Module, n: int, k_guess: int = 16) -> int:
    width = sum(p.numel() * p.element_size() for p in trainable_parameters(model).values())
    return max(1, min(n, cotangent_budget_bytes(next(model.parameters()).device) // (
        2 * k_guess * max(1, width)
    )))  # fmt: skip


def jacobian_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    compute: str,
    block_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-module parts of Θ(x1, x2) by Jacobian contraction, in blocks of samples (default:
    from the memory budget). torch.func's vmap(jacrev) where it runs, plain autograd
    otherwise."""
    params, _, f_single = functional(model)
    block = block_size or _jacobian_block_size(model, x1.shape[0])
    functorch_jac = vmap(jacrev(f_single), in_dims=(None, 0))
    use_functorch = True

    def jac(x: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal use_functorch
        if use_functorch:
            try:
                out = functorch_jac(params, x)
                return {n: v.flatten(2) for n, v in out.items()}
            except Exception:  # torch.func cannot run this model: plain autograd instead
                use_functorch = False
        return autograd_jacobian(model, x)

    xs2 = x1 if x2 is None else x2
    row_tiles: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    for r in range(0, x1.shape[0], block):
        j1 = jac(x1[r : r + block])
        tiles: dict[str, list[torch.Tensor]] = {name: [] for name in params}
        for c in range(0, xs2.shape[0], block):
            j2 = j1 if x2 is None and c == r else jac(xs2[c : c + block])
            for name in params:
                tiles[name].append(_contract(j1[name], j2[name], compute))
        for name in params:
            row_tiles[name].append(torch.cat(tiles[name], dim=1))
    out = {name: torch.cat(rows, dim=0) for name, rows in row_tiles.items()}
    return _group_sum(out)


def ntk_vp(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, compute: str
) -> dict[str, torch.Tensor]:
    """Per-module parts of Θ(x1, x2) from NTK-vector products: for each row sample i, the VJP
    of f(x_i) pulls each output basis vector back to parameter space, and a JVP of the column
    batch pushes it forward, restricted to one module's parameters at a time. Models without
    forward-mode AD (or that torch.func cannot run) use reverse mode instead: the column
    batch's per-sample Jacobians by plain autograd, applied to the pulled vectors."""
    try:
        return _ntk_vp_functorch(model, x1, x2, compute)
    except Exception:
        return _ntk_vp_reverse(model, x1, x2, compute)


def _groups(params: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in params:
        groups.setdefault(owner(name), []).append(name)
    return groups


def _reduce(full: torch.Tensor, compute: str) -> torch.Tensor:
    """(n2, c, c') block → the layout of ``compute``."""
    if compute == "full":
        return full
    if compute == "trace":
        return full.diagonal(dim1=1, dim2=2).sum(-1)
    return full.diagonal(dim1=1, dim2=2)


def _ntk_vp_functorch(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, compute: str
) -> dict[str, torch.Tensor]:
    params, f_batch, f_single = functional(model)
    xs2 = x1 if x2 is None else x2
    groups = _groups(params)
    k = f_single(params, x1[0]).shape[0]
    dtype = next(iter(params.values())).dtype
    basis = torch.eye(k, dtype=dtype, device=x1.device)
    parts: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
    for i in range(x1.shape[0]):
        _, pullback = vjp(lambda th, xi=x1[i]: f_single(th, xi), params)
        for group, names in groups.items():

            def column(e: torch.Tensor, names=names, pullback=pullback) -> torch.Tensor:
                v = pullback(e)[0]
                tangent = {n: v[n] if n in names else torch.zeros_like(v[n]) for n in params}
                return jvp(lambda th: f_batch(th, xs2), (params,), (tangent,))[1]

            block = vmap(column)(basis)  # (k, n2, k): block[c, j, c'] = Θ[(i,c),(j,c')]
            parts[group].append(_reduce(block.permute(1, 0, 2), compute))
    return {g: torch.stack(v) for g, v in parts.items()}


def _ntk_vp_reverse(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, compute: str
) -> dict[str, torch.Tensor]:
    xs2 = x1 if x2 is None else x2
    j2 = autograd_jacobian(model, xs2)  # name -> (n2, k, P)
    parts: dict[str, list[torch.Tensor]] = {g: [] for g in _groups(j2)}
    for i in range(x1.shape[0]):
        j1 = autograd_jacobian(model, x1[i : i + 1])  # the pulled basis vectors of sample i
        for group, names in _groups(j2).items():
            # block[j, c, c'] = Σ_p J1[i, c, p] J2[j, c', p] over the group's parameters
            block = sum(torch.einsum("cp,jdp->jcd", j1[n][0], j2[n]) for n in names)
            parts[group].append(_reduce(block, compute))
    return {g: torch.stack(v) for g, v in parts.items()}


def batch_coupled_ntk(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, compute: str
) -> dict[str, torch.Tensor]:
    """Exact kernel of a model whose BatchNorms use batch statistics: J(X1) J(X2)ᵀ with J the
    Jacobian of the outputs of the whole batch (each of X1, X2 normalised as its own batch).
    Works on a copy of the model with running statistics disabled, so the user's buffers are
    never updated."""
    work = copy.deepcopy(model)
    for m in work.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    params, f_batch, _ = functional(work)
    jac1 = jacrev(f_batch)(params, x1)
    jac2 = jac1 if x2 is None else jacrev(f_batch)(params, x2)
    per_param = {
        name: _contract(jac1[name].flatten(2), jac2[name].flatten(2), compute) for name in params
    }
    return _group_sum(per_param)
