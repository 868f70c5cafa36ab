"""Per-module NTK rules: turn one module use (inputs + output cotangents) into features, and
accumulate the NTK contribution of a pair of feature sets into a kernel tile.

Three feature kinds, one contraction each:

* ``DenseFeatures``  (Linear on (n, d_in) inputs): a (n, d), g (n, k, p), β. Pair term
  (a_i·a_j + β)(g_ic·g_jc') through the fused Gram kernel.
* ``SpatialFeatures`` (Conv1d/2d after im2col, Linear on (n, ..., d_in) inputs):
  A (n, G, T, d), G (n, k, G, T, p) for G groups and T positions. Pair term
  Σ_g Σ_{t,s} (A_igt·A_jgs)(G_icgt·G_jc'gs) + bias (Σ_t G_icgt)·(Σ_s G_jc'gs). Computed either
  "ghost" (spatial Grams, cost ∝ T²(d + p·kk) per pair) or "materialize" (per-sample gradients
  then one GEMM, cost ∝ d·p·kk per pair), chosen by that cost model.
* ``GradFeatures`` (any other module, and the materialised spatial route): per-sample
  gradients Φ (n, k, P_m) of the module's trainable parameters; pair term Φ_ic·Φ_jc'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch.func import functional_call, vjp, vmap

from ..gram import gram_accumulate
from .attention import BLOCKS, attention_parts
from .capture import ModuleUse, batched_vjp, model_output, quiet_vmap
from .plan import Route

ConvRoute = Literal["auto", "ghost", "materialize"]


# Per parameter in feature order: (qualified name, shape), or (qualified name, full shape, rows)
# when the features cover only the rows ``rows`` of the parameter (a block of MHA's packed
# in_proj_weight).
Names = list[tuple]


def block_shape(entry: tuple) -> tuple[int, ...]:
    if len(entry) == 2:
        return tuple(entry[1])
    _, shape, rows = entry
    return (rows.stop - rows.start, *shape[1:])


def _place(entry: tuple, block: torch.Tensor) -> torch.Tensor:
    """A block's gradient as a tensor of the whole parameter's shape."""
    if len(entry) == 2:
        return block.reshape(entry[1])
    _, shape, rows = entry
    full = block.new_zeros(shape)
    full[rows] = block.reshape(block_shape(entry))
    return full


@dataclass
class DenseFeatures:
    a: torch.Tensor  # (n, d); d = 0 when the weight is not on this route
    g: torch.Tensor  # (n, k, p)
    beta: float  # 1.0 when the bias is on this route
    names: Names


@dataclass
class SpatialFeatures:
    a: torch.Tensor  # (n, G, T, d); d = 0 when the weight is not on this route
    g: torch.Tensor  # (n, k, G, T, p)
    bias: bool
    names: Names


@dataclass
class GradFeatures:
    phi: torch.Tensor  # (n, k, P_m)
    names: Names


Features = DenseFeatures | SpatialFeatures | GradFeatures


@dataclass
class Group:
    """Features of one set of parameters from one module use: ``key`` pairs uses of the same
    parameters with each other, ``part`` names the module the contribution is reported under."""

    key: str
    part: str
    features: Features


def ghost_is_cheaper(t: int, d: int, p: int, kk: int) -> bool:
    """Per sample pair: ghost costs T²(d + p·kk), materialised gradients cost d·p·kk."""
    return t * t * (d + p * kk) < d * p * kk


def _names(route: Route, attrs: list[str]) -> Names:
    return [(route.qualified[a], route.params[a].shape) for a in attrs if a in route.params]


def _tensor_leaves(use: ModuleUse) -> tuple[list[Any], Any]:
    return pytree.tree_flatten((use.args, use.kwargs))


def _linear_features(use: ModuleUse, route: Route) -> DenseFeatures | SpatialFeatures:
    leaves, _ = _tensor_leaves(use)
    i = next(j for j, v in enumerate(leaves) if isinstance(v, torch.Tensor))
    axis = route.uses[use.index].inputs[i]
    assert axis is not None
    a = leaves[i].movedim(axis, 0)
    g = use.grad  # (n, k, *rest, p), batch axis already first
    weight, bias = "weight" in route.params, "bias" in route.params
    a_w = a if weight else a[..., :0]
    names = _names(route, ["weight", "bias"])
    if a.dim() == 2:
        return DenseFeatures(a_w, g, 1.0 if bias else 0.0, names)
    n, k = g.shape[:2]
    return SpatialFeatures(
        a_w.reshape(n, 1, -1, a_w.shape[-1]), g.reshape(n, k, 1, -1, g.shape[-1]), bias, names
    )


def _conv_features(use: ModuleUse, route: Route) -> SpatialFeatures:
    module = route.module
    x = pytree.tree_flatten((use.args, use.kwargs))[0][0]
    g = use.grad  # (n, k, C_out, *spatial)
    n, k = g.shape[:2]
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        ks, dil, pad, st = (
            (1, *module.kernel_size),
            (1, *module.dilation),
            (0, *module.padding),
            (1, *module.stride),
        )
    else:
        ks, dil, pad, st = module.kernel_size, module.dilation, module.padding, module.stride
    cols = F.unfold(x, ks, dilation=dil, padding=pad, stride=st)  # (n, C_in*kh*kw, T)
    groups = module.groups
    t = cols.shape[-1]
    a = cols.reshape(n, groups, -1, t).transpose(2, 3)  # (n, G, T, d_g)
    p = module.out_channels // groups
    gg = g.reshape(n, k, groups, p, t).transpose(3, 4)  # (n, k, G, T, p_g)
    a_w = a if "weight" in route.params else a[..., :0]
    return SpatialFeatures(a_w, gg, "bias" in route.params, _names(route, ["weight", "bias"]))


def _materialise_spatial(f: SpatialFeatures) -> GradFeatures:
    n, k = f.g.shape[:2]
    parts = []
    if f.a.shape[-1] > 0:
        parts.append(torch.einsum("ncgtp,ngtd->ncgpd", f.g, f.a).reshape(n, k, -1))
    if f.bias:
        parts.append(f.g.sum(dim=3).reshape(n, k, -1))
    return GradFeatures(torch.cat(parts, dim=2), f.names)


def _module_grads_vmap(use: ModuleUse, route: Route, chunk: int) -> torch.Tensor:
    """(n, k, P) per-sample gradients of the route's parameters: vmap over samples (inputs
    split along their batch axes, shared ones passed whole) and outputs of the module's VJP."""
    axes = route.uses[use.index]
    leaves, spec = _tensor_leaves(use)
    batched = [i for i, ax in enumerate(axes.inputs) if ax is not None]
    in_axes = [axes.inputs[i] for i in batched]
    tracked = [j for j, g in enumerate(use.grads) if g is not None]
    params = {rel: p.detach() for rel, p in route.params.items()}

    def single(theta: dict[str, torch.Tensor], *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = list(leaves)
        for i, ax, row in zip(batched, in_axes, rows, strict=True):
            full[i] = row.unsqueeze(ax)
        args, kwargs = pytree.tree_unflatten(full, spec)
        out = functional_call(route.module, theta, tuple(args), kwargs, tie_weights=False)
        outs = pytree.tree_flatten(out)[0]
        return tuple(outs[j].select(axes.outputs[j], 0) for j in tracked)

    def sample_grads(cots: tuple[torch.Tensor, ...], *rows: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(lambda th: single(th, *rows), params)
        per_output = vmap(lambda *v: pullback(tuple(v))[0])(*cots)  # name -> (k, *shape)
        k = cots[0].shape[0]
        return torch.cat([per_output[rel].reshape(k, -1) for rel in params], dim=1)

    n = use.grads[tracked[0]].shape[0]
    pieces = []
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        rows = [leaves[i].narrow(ax, s, m) for i, ax in zip(batched, in_axes, strict=True)]
        cots = tuple(use.grads[j][s : s + m] for j in tracked)
        with quiet_vmap():
            pieces.append(vmap(sample_grads, in_dims=(0, *in_axes))(cots, *rows))
    return torch.cat(pieces, dim=0)


def _module_grads_autograd(use: ModuleUse, route: Route, sub: int = 4) -> torch.Tensor:
    """The same as :func:`_module_grads_vmap` by plain autograd (modules vmap cannot run,
    e.g. recurrent layers): the module re-run on ``sub`` samples at a time, one batched
    backward over (sample, output) seeds."""
    axes = route.uses[use.index]
    leaves, spec = _tensor_leaves(use)
    tracked = [j for j, g in enumerate(use.grads) if g is not None]
    params = list(route.params.values())
    n, k = use.grads[tracked[0]].shape[:2]
    pieces = []
    for s in range(0, n, sub):
        m = min(sub, n - s)
        full = [
            v if ax is None else v.narrow(ax, s, m)
            for v, ax in zip(leaves, axes.inputs, strict=True)
        ]
        args, kwargs = pytree.tree_unflatten(full, spec)
        with torch.enable_grad():
            outs = pytree.tree_flatten(route.module(*args, **kwargs))[0]
        targets, seeds = [], []
        for j in tracked:
            out, ax, g = outs[j], axes.outputs[j], use.grads[j]
            seed = out.new_zeros((m * k, *out.shape))
            for i in range(m):
                seed[i * k : (i + 1) * k].select(1 + ax, i).copy_(g[s + i])
            targets.append(out)
            seeds.append(seed)
        grads = batched_vjp(targets, params, seeds)
        pieces.append(torch.cat([gr.reshape(m, k, -1) for gr in grads], dim=2))
    return torch.cat(pieces, dim=0)


def _module_features(use: ModuleUse, route: Route, chunk: int) -> GradFeatures:
    names: Names = [(route.qualified[rel], p.shape) for rel, p in route.params.items()]
    if route.autograd:
        return GradFeatures(_module_grads_autograd(use, route), names)
    return GradFeatures(_module_grads_vmap(use, route, chunk), names)


def _split_by_part(route: Route, f: GradFeatures) -> list[Group]:
    """One group per module owning the parameters (a host's adopted descendants apart)."""
    owners = [entry[0].rpartition(".")[0] for entry in f.names]
    if len(set(owners)) == 1:
        return [Group(route.name, owners[0], f)]
    groups: dict[str, tuple[list[torch.Tensor], Names]] = {}
    offset = 0
    for entry, owner in zip(f.names, owners, strict=True):
        size = math.prod(block_shape(entry))
        cols, names = groups.setdefault(owner, ([], []))
        cols.append(f.phi[:, :, offset : offset + size])
        names.append(entry)
        offset += size
    return [
        Group(f"{route.name}/{owner}", owner, GradFeatures(torch.cat(cols, dim=2), names))
        for owner, (cols, names) in groups.items()
    ]


def _spatial_group(
    key: str, part: str, spatial: SpatialFeatures, kk: int, conv_route: ConvRoute
) -> Group:
    _, _, t, d = spatial.a.shape
    p = spatial.g.shape[-1]  # per group; both costs scale with the group count alike
    ghost = conv_route == "ghost" or (conv_route == "auto" and ghost_is_cheaper(t, d, p, kk))
    return Group(key, part, spatial if ghost else _materialise_spatial(spatial))


def _attention_features(
    use: ModuleUse, route: Route, kk: int, conv_route: ConvRoute
) -> list[Group]:
    """Linear Gram features for the q/k/v blocks of in_proj and for out_proj (attention.py)."""
    e = route.module.embed_dim
    groups = []
    for block, a, g in attention_parts(use, route):
        n, k = g.shape[:2]
        if block == "out":
            w_name, b_name, rows = "out_proj.weight", "out_proj.bias", None
        else:
            b = BLOCKS.index(block)
            w_name, b_name, rows = "in_proj_weight", "in_proj_bias", slice(b * e, (b + 1) * e)
        names: Names = []
        for rel in (w_name, b_name):
            if rel in route.params:
                shape = route.params[rel].shape
                q = route.qualified[rel]
                names.append((q, shape) if rows is None else (q, shape, rows))
        if not names:
            continue
        weight = w_name in route.params
        a_w = a if weight else a[..., :0]
        spatial = SpatialFeatures(
            a_w.reshape(n, 1, -1, a_w.shape[-1]),
            g.reshape(n, k, 1, -1, g.shape[-1]),
            b_name in route.params,
            names,
        )
        part = names[0][0].rpartition(".")[0]
        groups.append(_spatial_group(f"{route.name}/{block}", part, spatial, kk, conv_route))
    return groups


def route_features(
    use: ModuleUse, route: Route, *, kk: int, conv_route: ConvRoute, chunk: int
) -> list[Group]:
    """Features of one module use on its route. ``kk`` is the number of output pairs per
    sample pair (k² for compute='full', k otherwise), used by the conv cost model."""
    if route.rule == "module":
        return _split_by_part(route, _module_features(use, route, chunk))
    if route.rule == "attention":
        return _attention_features(use, route, kk, conv_route)
    spatial = _linear_features(use, route) if route.rule == "linear" else _conv_features(use, route)
    if isinstance(spatial, DenseFeatures):
        return [Group(route.name, route.name, spatial)]
    return [_spatial_group(route.name, route.name, spatial, kk, conv_route)]


def generic_features(
    model: nn.Module,
    x: torch.Tensor,
    parts: dict[str, dict[str, torch.Tensor]],
    k: int,
    budget_bytes: int,
    per_sample: bool = False,
) -> list[Group]:
    """Per-sample gradients Φ (n, k, P) of the whole network's outputs w.r.t. the generic
    parameters, one group per part: the model re-run on a few samples at a time (one with
    ``per_sample``, for backward passes that couple samples; plain forward, no hooks) and
    one batched backward over their (sample, output) seeds."""
    order = [(part, q, p) for part, params in parts.items() for q, p in params.items()]
    if not order:
        return []
    params = [p for _, _, p in order]
    width = sum(p.numel() for p in params)
    esize = params[0].element_size()
    sub = max(1, min(x.shape[0], budget_bytes // max(1, 2 * k * width * esize)))
    sub = 1 if per_sample else min(sub, 8)
    pieces: list[list[torch.Tensor]] = []
    for s in range(0, x.shape[0], sub):
        xs = x[s : s + sub]
        m = xs.shape[0]
        with torch.enable_grad():
            flat = model_output(model, xs)
        seed = torch.eye(m * k, dtype=flat.dtype, device=flat.device).reshape(m * k, m, k)
        grads = batched_vjp([flat], params, [seed])
        pieces.append([gr.reshape(m, k, -1) for gr in grads])
    per_param = [torch.cat([piece[i] for piece in pieces]) for i in range(len(params))]
    groups = []
    for part in parts:
        idx = [i for i, (pt, _, _) in enumerate(order) if pt == part]
        names = [(order[i][1], order[i][2].shape) for i in idx]
        phi = torch.cat([per_param[i] for i in idx], dim=2)
        groups.append(Group(f"<generic>/{part}", part, GradFeatures(phi, names)))
    return groups


def implied_gradients(f: Features, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_ic w_ic ∂f_c(x_i)/∂θ for the parameters of ``f`` as the features imply it (w: (n, k)),
    as tensors of the parameters' shapes."""
    if isinstance(f, GradFeatures):
        flat = torch.einsum("ic,icp->p", w, f.phi)
        out, offset = {}, 0
        for entry in f.names:
            size = math.prod(block_shape(entry))
            out[entry[0]] = _place(entry, flat[offset : offset + size])
            offset += size
        return out
    out = {}
    names = iter(f.names)
    if isinstance(f, DenseFeatures):
        gw = torch.einsum("ic,icp->ip", w, f.g)
        if f.a.shape[-1] > 0:
            entry = next(names)
            out[entry[0]] = _place(entry, gw.T @ f.a)
        if f.beta:
            entry = next(names)
            out[entry[0]] = _place(entry, gw.sum(0))
        return out
    gw = torch.einsum("ic,icgtp->igtp", w, f.g)
    if f.a.shape[-1] > 0:
        entry = next(names)
        out[entry[0]] = _place(entry, torch.einsum("igtp,igtd->gpd", gw, f.a))
    if f.bias:
        entry = next(names)
        out[entry[0]] = _place(entry, gw.sum(dim=(0, 2)))
    return out


def feature_bytes_per_sample(f: Features) -> int:
    tensors = [f.phi] if isinstance(f, GradFeatures) else [f.a, f.g]
    return sum(t[0].numel() * t.element_size() for t in tensors)


def _ghost_pair(out: torch.Tensor, f1: SpatialFeatures, f2: SpatialFeatures, compute: str) -> None:
    if f1.a.shape[-1] > 0:
        sa = torch.einsum("igtd,jgsd->ijgts", f1.a, f2.a)  # (n1, n2, G, T, T)
        if compute == "trace":
            for c in range(f1.g.shape[1]):
                sg = torch.einsum("igtp,jgsp->ijgts", f1.g[:, c], f2.g[:, c])
                out += (sa * sg).sum(dim=(2, 3, 4))
        else:
            for c in range(f1.g.shape[1]):
                if compute == "full":
                    sg = torch.einsum("igtp,jcgsp->ijcgts", f1.g[:, c], f2.g)
                    out[:, :, c, :] += torch.einsum("ijgts,ijcgts->ijc", sa, sg)
                else:
                    sg = torch.einsum("igtp,jgsp->ijgts", f1.g[:, c], f2.g[:, c])
                    out[:, :, c] += (sa * sg).sum(dim=(2, 3, 4))
    if f1.bias:
        b1, b2 = f1.g.sum(dim=3), f2.g.sum(dim=3)  # (n, k, G, p)
        _gram(out, b1.reshape(*b1.shape[:2], -1), b2.reshape(*b2.shape[:2], -1), compute)


def _gram(out: torch.Tensor, phi1: torch.Tensor, phi2: torch.Tensor | None, compute: str) -> None:
    """out += Φ1 Φ2ᵀ (per output pair) via the fused kernel with an empty activation axis."""
    empty1 = phi1.new_zeros(phi1.shape[0], 0)
    empty2 = None if phi2 is None else phi2.new_zeros(phi2.shape[0], 0)
    gram_accumulate(out, empty1, phi1, empty2, phi2, beta=1.0, compute=compute, check_finite=False)


def as_grad_features(f: Features) -> GradFeatures:
    """The per-sample gradients Φ (n, k, P) that any feature kind stands for (weight then
    bias, in the parameters' layout)."""
    if isinstance(f, GradFeatures):
        return f
    if isinstance(f, SpatialFeatures):
        return _materialise_spatial(f)
    n, k = f.g.shape[:2]
    cols = []
    if f.a.shape[-1] > 0:
        cols.append(torch.einsum("icp,id->icpd", f.g, f.a).reshape(n, k, -1))
    if f.beta:
        cols.append(f.g)
    return GradFeatures(torch.cat(cols, dim=2), f.names)


@torch.no_grad()
def accumulate_pair(out: torch.Tensor, f1: Features, f2: Features | None, compute: str) -> None:
    """out += NTK contribution of the pair (f1 rows, f2 columns); f2 None means f1 with itself
    (symmetric, upper triangle computed once); no autograd graph is recorded. Two uses of
    one module whose features differ in kind (a Linear applied to (n, d) and to (n, T, d)
    inputs, or conv uses routed differently by the cost model) are paired through their
    per-sample gradients."""
    if f2 is not None and type(f1) is not type(f2):
        f1, f2 = as_grad_features(f1), as_grad_features(f2)
    if isinstance(f1, DenseFeatures):
        assert f2 is None or isinstance(f2, DenseFeatures)
        gram_accumulate(
            out,
            f1.a,
            f1.g,
            None if f2 is None else f2.a,
            None if f2 is None else f2.g,
            beta=f1.beta,
            compute=compute,
            check_finite=False,
        )
    elif isinstance(f1, GradFeatures):
        assert f2 is None or isinstance(f2, GradFeatures)
        _gram(out, f1.phi, None if f2 is None else f2.phi, compute)
    else:
        assert f2 is None or isinstance(f2, SpatialFeatures)
        _ghost_pair(out, f1, f1 if f2 is None else f2, compute)


def default_chunk(n: int, k: int, params: int, budget_elems: int = 1 << 24) -> int:
    """Samples per per-sample-gradient chunk so that chunk·k·P stays under the budget."""
    return max(1, min(n, budget_elems // max(1, k * params)))


__all__ = [
    "DenseFeatures",
    "Features",
    "GradFeatures",
    "Group",
    "SpatialFeatures",
    "accumulate_pair",
    "as_grad_features",
    "batched_vjp",
    "default_chunk",
    "feature_bytes_per_sample",
    "generic_features",
    "ghost_is_cheaper",
    "implied_gradients",
    "route_features",
]
