"""Reference NTK implementations users know from the PyTorch tutorial (torch.func):

* ``jacobian``: per-sample Jacobians by ``vmap(jacrev)``, contracted per parameter;
* ``ntk_vp``: NTK-vector products, one VJP on a row sample and one JVP on the column batch
  per output basis vector;
* ``batch``: the batch-coupled kernel of a model with train-mode BatchNorm, J(X) J(X)ᵀ with
  J the Jacobian of the whole batch's outputs (slow, memory n·k·P).

All return per-module parts (name of the module owning the parameters → kernel) so that the
structured engine's ``return_layers`` can be checked part by part.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

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


def _functional(model: nn.Module):
    params = {n: p.detach() for n, p in trainable_parameters(model).items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def f_batch(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**theta, **frozen, **buffers}, (x,))
        return out.reshape(x.shape[0], -1)

    def f_single(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return f_batch(theta, x.unsqueeze(0))[0]

    return params, f_batch, f_single


def _group_sum(per_param: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts: dict[str, torch.Tensor] = {}
    for name, value in per_param.items():
        key = owner(name)
        parts[key] = value if key not in parts else parts[key] + value
    return parts


def jacobian_ntk(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, compute: str, block_size: int
) -> dict[str, torch.Tensor]:
    """Per-module parts of Θ(x1, x2) by Jacobian contraction, in blocks of samples."""
    params, _, f_single = _functional(model)
    jac = vmap(jacrev(f_single), in_dims=(None, 0))
    xs2 = x1 if x2 is None else x2
    row_tiles: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    for r in range(0, x1.shape[0], block_size):
        j1 = jac(params, x1[r : r + block_size])
        tiles: dict[str, list[torch.Tensor]] = {name: [] for name in params}
        for c in range(0, xs2.shape[0], block_size):
            j2 = jac(params, xs2[c : c + block_size])
            for name in params:
                tiles[name].append(_contract(j1[name].flatten(2), j2[name].flatten(2), compute))
        for name in params:
            row_tiles[name].append(torch.cat(tiles[name], dim=1))
    out = {name: torch.cat(rows, dim=0) for name, rows in row_tiles.items()}
    return _group_sum(out)


def ntk_vp(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, compute: str
) -> dict[str, torch.Tensor]:
    """Per-module parts of Θ(x1, x2) from NTK-vector products: for each row sample i, the VJP
    of f(x_i) pulls each output basis vector back to parameter space, and a JVP of the column
    batch pushes it forward, restricted to one module's parameters at a time."""
    params, f_batch, f_single = _functional(model)
    xs2 = x1 if x2 is None else x2
    groups: dict[str, list[str]] = {}
    for name in params:
        groups.setdefault(owner(name), []).append(name)
    k = f_single(params, x1[0]).shape[0]
    basis = torch.eye(
        k,
        dtype=x1.dtype if x1.is_floating_point() else next(iter(params.values())).dtype,
        device=x1.device,
    )
    parts = {g: [] for g in groups}
    for i in range(x1.shape[0]):
        _, pullback = vjp(lambda th, xi=x1[i]: f_single(th, xi), params)
        for group, names in groups.items():

            def column(e: torch.Tensor, names=names, pullback=pullback) -> torch.Tensor:
                v = pullback(e)[0]
                tangent = {n: v[n] if n in names else torch.zeros_like(v[n]) for n in params}
                return jvp(lambda th: f_batch(th, xs2), (params,), (tangent,))[1]

            block = vmap(column)(basis)  # (k, n2, k): block[c, j, c'] = Θ[(i,c),(j,c')]
            full = block.permute(1, 0, 2)  # (n2, c, c')
            if compute == "full":
                parts[group].append(full)
            elif compute == "trace":
                parts[group].append(full.diagonal(dim1=1, dim2=2).sum(-1))
            else:
                parts[group].append(full.diagonal(dim1=1, dim2=2))
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
    params, f_batch, _ = _functional(work)
    jac1 = jacrev(f_batch)(params, x1)
    jac2 = jac1 if x2 is None else jacrev(f_batch)(params, x2)
    per_param = {
        name: _contract(jac1[name].flatten(2), jac2[name].flatten(2), compute) for name in params
    }
    return _group_sum(per_param)
