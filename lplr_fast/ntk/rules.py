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

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap

from ..gram import gram_accumulate
from .capture import Capture, ModuleUse

ConvRoute = Literal["auto", "ghost", "materialize"]


@dataclass
class DenseFeatures:
    a: torch.Tensor  # (n, d); d = 0 when the weight is frozen
    g: torch.Tensor  # (n, k, p)
    beta: float  # 1.0 when the bias is trainable


@dataclass
class SpatialFeatures:
    a: torch.Tensor  # (n, G, T, d); d = 0 when the weight is frozen
    g: torch.Tensor  # (n, k, G, T, p)
    bias: bool


@dataclass
class GradFeatures:
    phi: torch.Tensor  # (n, k, P_m)


Features = DenseFeatures | SpatialFeatures | GradFeatures


def _trainable(module: nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, torch.Tensor) and p.requires_grad


def _weight_input(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """The activations, or an empty feature axis when the weight is frozen."""
    return a if _trainable(module, "weight") else a[..., :0]


def ghost_is_cheaper(t: int, d: int, p: int, kk: int) -> bool:
    """Per sample pair: ghost costs T²(d + p·kk), materialised gradients cost d·p·kk."""
    return t * t * (d + p * kk) < d * p * kk


def _conv_features(module: nn.Conv1d | nn.Conv2d, use: ModuleUse) -> SpatialFeatures:
    x = use.args[0]
    g = use.grad  # (n, k, C_out, *spatial)
    assert g is not None
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
    return SpatialFeatures(_weight_input(module, a), gg, _trainable(module, "bias"))


def _owns_only_weight_bias(module: nn.Module) -> bool:
    """No extra direct parameters (a subclass adding some falls back to per-sample grads)."""
    return {name for name, _ in module.named_parameters(recurse=False)} <= {"weight", "bias"}


def _conv_rule_applies(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _per_sample_grads(
    module: nn.Module, use: ModuleUse, capture: Capture, chunk: int
) -> GradFeatures:
    """Exact per-sample gradients of the module's trainable direct parameters, by vmap over
    samples and outputs of the module's VJP, in chunks of ``chunk`` samples."""
    params = {n: p.detach() for n, p in module.named_parameters(recurse=False) if p.requires_grad}
    g = use.grad
    assert g is not None
    n = g.shape[0]
    batched = [
        i
        for i, a in enumerate(use.args)
        if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n
    ]

    def single(theta: dict[str, torch.Tensor], *row_args: torch.Tensor) -> torch.Tensor:
        args = list(use.args)
        for i, a in zip(batched, row_args, strict=True):
            args[i] = a.unsqueeze(0)
        return functional_call(module, theta, tuple(args), use.kwargs)[0]

    def sample_grads(cot: torch.Tensor, *row_args: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(lambda th: single(th, *row_args), params)
        per_output = vmap(lambda v: pullback(v)[0])(cot)  # dict name -> (k, *shape)
        return torch.cat([per_output[name].reshape(cot.shape[0], -1) for name in params], dim=1)

    pieces = []
    with capture.pause():
        for s in range(0, n, chunk):
            rows = [use.args[i][s : s + chunk] for i in batched]
            pieces.append(vmap(sample_grads)(g[s : s + chunk], *rows))
    return GradFeatures(torch.cat(pieces, dim=0))


def _materialise_spatial(f: SpatialFeatures) -> GradFeatures:
    n, k = f.g.shape[:2]
    parts = []
    if f.a.shape[-1] > 0:
        parts.append(torch.einsum("ncgtp,ngtd->ncgpd", f.g, f.a).reshape(n, k, -1))
    if f.bias:
        parts.append(f.g.sum(dim=3).reshape(n, k, -1))
    return GradFeatures(torch.cat(parts, dim=2))


def module_features(
    use: ModuleUse, capture: Capture, *, kk: int, route: ConvRoute, chunk: int
) -> Features:
    """Features of one module use. ``kk`` is the number of output pairs per sample pair
    (k² for compute='full', k otherwise), used by the cost model."""
    module = use.module
    g = use.grad
    assert g is not None
    if isinstance(module, nn.Linear) and _owns_only_weight_bias(module):
        a = use.args[0]
        if a.dim() == 2:
            return DenseFeatures(
                _weight_input(module, a), g, 1.0 if _trainable(module, "bias") else 0.0
            )
        n, k = g.shape[:2]
        spatial = SpatialFeatures(
            _weight_input(module, a.reshape(n, 1, -1, a.shape[-1])),
            g.reshape(n, k, 1, -1, g.shape[-1]),
            _trainable(module, "bias"),
        )
    elif _conv_rule_applies(module) and _owns_only_weight_bias(module):
        spatial = _conv_features(module, use)
    else:
        return _per_sample_grads(module, use, capture, chunk)
    _, _, t, d = spatial.a.shape
    p = spatial.g.shape[-1]  # per group; both costs scale with the group count alike
    ghost = route == "ghost" or (route == "auto" and ghost_is_cheaper(t, d, p, kk))
    return spatial if ghost else _materialise_spatial(spatial)


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


def accumulate_pair(out: torch.Tensor, f1: Features, f2: Features | None, compute: str) -> None:
    """out += NTK contribution of the pair (f1 rows, f2 columns); f2 None means f1 with itself
    (symmetric, upper triangle computed once)."""
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
    "SpatialFeatures",
    "accumulate_pair",
    "default_chunk",
    "feature_bytes_per_sample",
    "ghost_is_cheaper",
    "module_features",
]
