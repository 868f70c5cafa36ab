"""The structured rule for ``nn.MultiheadAttention``: its projections are sequence Linears.

For query/key/value inputs X_q, X_k, X_v (n, T, E) and in-projection blocks W_q, W_k, W_v of
``in_proj_weight`` (3E, E), the projections P_b = X_b W_bᵀ + b_b are Linear maps applied per
token, and the output is out_proj(attention(P_q, P_k, P_v)). So with the cotangents G_b of
the projections and G_o of the output, each parameter block gets the Linear Gram rule
(rules.py, ``SpatialFeatures``): (X_b, G_b) for W_b / b_b, (A, G_o) for out_proj with A the
attention output before out_proj.

G_b and A come from re-running the module's own forward on the detached projections with
the projections and out_proj replaced by identities (x·I + 0 = x exactly, so the values are
the module's), then one batched backward of the captured output cotangents (pulled through
out_proj: G_o W_o) to the projections. The engine checks the rule's implied gradients
against autograd before use (plan.py), so a torch version whose MHA differs falls back to the
exact generic rule rather than giving a wrong kernel.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch.func import functional_call

from .capture import ModuleUse, batched_vjp
from .plan import Route

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)
BLOCKS = ("q", "k", "v")


def _bound(use: ModuleUse, module: nn.Module) -> tuple[list, dict[str, int]]:
    """The flattened input leaves and the leaf index of query / key / value."""
    leaves, spec = pytree.tree_flatten((use.args, use.kwargs))
    args, kwargs = pytree.tree_unflatten(list(range(len(leaves))), spec)
    bound = _SIGNATURE.bind(module, *args, **kwargs)
    return leaves, {name: bound.arguments[name] for name in ("query", "key", "value")}


def _to_module_layout(g: torch.Tensor, axis: int) -> torch.Tensor:
    """(n, k, *rest) cotangents → (k, *leaf shape) with the batch back on ``axis``."""
    return g.transpose(0, 1).movedim(1, 1 + axis)


def attention_parts(use: ModuleUse, route: Route) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """[(block, inputs (n, T, E_in), cotangents (n, k, T, E_out))] for the q, k, v
    in-projection blocks and "out" (out_proj), batch axis first."""
    module = route.module
    axis = 0 if module.batch_first else 1
    leaves, index = _bound(use, module)
    inputs = [leaves[index[name]] for name in ("query", "key", "value")]
    e = module.embed_dim
    weight, bias = module.in_proj_weight, module.in_proj_bias
    eye = torch.eye(e, dtype=weight.dtype, device=weight.device)
    with torch.enable_grad():
        blocks = [slice(b * e, (b + 1) * e) for b in range(3)]
        projections = [
            F.linear(x, weight[r], None if bias is None else bias[r]).detach().requires_grad_()
            for r, x in zip(blocks, inputs, strict=True)
        ]
        full = list(leaves)
        for name, p in zip(("query", "key", "value"), projections, strict=True):
            full[index[name]] = p
        args, kwargs = pytree.tree_unflatten(full, pytree.tree_flatten((use.args, use.kwargs))[1])
        identity = {"in_proj_weight": torch.cat([eye, eye, eye]), "out_proj.weight": eye}
        if bias is not None:
            identity["in_proj_bias"] = torch.zeros_like(bias)
        if module.out_proj.bias is not None:
            identity["out_proj.bias"] = torch.zeros_like(module.out_proj.bias)
        outs = pytree.tree_flatten(functional_call(module, identity, tuple(args), kwargs))[0]
    before_out = outs[0]  # attention output before out_proj, module layout
    g_out = use.grads[0]
    assert g_out is not None
    targets = [before_out]
    seeds = [_to_module_layout(g_out, axis) @ module.out_proj.weight]
    for j in range(1, len(outs)):
        g = use.grads[j] if j < len(use.grads) else None
        if g is not None:
            targets.append(outs[j])
            seeds.append(_to_module_layout(g, route.uses[use.index].outputs[j] or 0))
    grads = batched_vjp(targets, projections, seeds)
    parts = []
    for block, x, g in zip(BLOCKS, inputs, grads, strict=True):
        parts.append((block, x.movedim(axis, 0), g.movedim(1 + axis, 0)))
    parts.append(("out", before_out.detach().movedim(axis, 0), g_out))
    return parts
