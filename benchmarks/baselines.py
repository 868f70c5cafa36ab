"""The torch.func NTK recipes as users write them (PyTorch tutorial "Neural Tangent Kernels"),
for timing against ours: the Jacobian contraction and the NTK-vector products.

Both take a model and inputs and return the full kernel (n1, n2, k, k) or its trace.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap


def _functional(model: nn.Module):
    params = {name: p.detach() for name, p in model.named_parameters()}

    def f(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, theta, (x.unsqueeze(0),)).squeeze(0).reshape(-1)

    return params, f


def _finish(result: torch.Tensor, compute: str) -> torch.Tensor:
    return result.diagonal(dim1=-2, dim2=-1).sum(-1) if compute == "trace" else result


def jacobian_contraction(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, compute: str = "full"
) -> torch.Tensor:
    """vmap(jacrev) per-sample Jacobians of both inputs, contracted parameter by parameter
    (the tutorial's ``empirical_ntk_jacobian_contraction``): memory n·k·P per side."""
    params, f = _functional(model)
    jac1 = vmap(jacrev(f), (None, 0))(params, x1)
    jac2 = vmap(jacrev(f), (None, 0))(params, x2)
    total = None
    for name in params:
        j1 = jac1[name].flatten(2)
        j2 = jac2[name].flatten(2)
        term = torch.einsum("Naf,Mbf->NMab", j1, j2)
        total = term if total is None else total + term
    assert total is not None
    return _finish(total, compute)


def ntk_vector_products(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, compute: str = "full", chunk: int = 1
) -> torch.Tensor:
    """The tutorial's ``empirical_ntk_ntk_vps``: for every pair (x1_i, x2_j) and output basis
    vector, one VJP then one JVP, vmapped over the x2 samples and the basis; the x1 samples
    run ``chunk`` at a time (all at once needs n1·n2·k parameter-sized vectors)."""
    params, f = _functional(model)

    def get_ntk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out, vjp_fn = vjp(lambda th: f(th, a), params)

        def ntk_slice(vec: torch.Tensor) -> torch.Tensor:
            (cot,) = vjp_fn(vec)
            return jvp(lambda th: f(th, b), (params,), (cot,))[1]

        basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
        return vmap(ntk_slice)(basis)

    pair = vmap(vmap(get_ntk, (None, 0)), (0, None))
    blocks = [pair(x1[s : s + chunk], x2) for s in range(0, x1.shape[0], chunk)]
    return _finish(torch.cat(blocks), compute)
