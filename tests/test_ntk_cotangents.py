"""Batched cotangents over the output basis: equal to k sequential backward passes, chunked
in bounded memory, and a clear once-per-model fallback where the backward cannot be batched."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lplr_fast import empirical_ntk
from lplr_fast.ntk import capture as capture_mod
from lplr_fast.ntk.capture import Capture, forward_with_cotangents, output_chunk

from .models import SmallCNN, mlp, seeded


def _cotangents(model, x, **kwargs):
    cap = Capture(capture_mod.parametrised_modules(model))
    flat, uses = forward_with_cotangents(model, x, cap, **kwargs)
    return flat, [u.grad for u in uses]


@pytest.mark.parametrize("budget", [None, 1])  # 1 byte: one output per batched pass
def test_batched_equals_sequential(budget, rng):
    model = seeded(SmallCNN, 7)
    x = torch.randn(5, 2, 7, 7, generator=rng, dtype=torch.float64)
    _, batched = _cotangents(model, x, budget_bytes=budget)
    _, sequential = _cotangents(model, x, batched=False)
    for b, s in zip(batched, sequential, strict=True):
        assert b.shape == s.shape
        assert torch.allclose(b, s, rtol=1e-12, atol=1e-15)


def test_output_chunk_respects_budget():
    assert output_chunk(1000, 10, 10**9) == 1000
    assert output_chunk(1000, 1000, 100_000) == 50  # chunk·2·bytes ≤ budget
    assert output_chunk(1000, 10**9, 1) == 1


def test_k_1000_in_chunks(rng):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1000)).double()
    x = torch.randn(3, 4, generator=rng, dtype=torch.float64)
    flat, uses = _cotangents(model, x)
    per_output = 3 * (16 + 1000) * 8
    calls = []
    real = torch.autograd.grad

    def spy(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            calls.append(args[2].shape[0])
        return real(*args, **kwargs)

    budget = 64 * 2 * per_output  # 64 outputs per pass
    torch.autograd.grad = spy
    try:
        got = empirical_ntk_trace_via_budget(model, x, budget)
    finally:
        torch.autograd.grad = real
    assert max(calls) == 64 and sum(calls) == 1000
    ref = empirical_ntk(model, x, compute="trace", implementation="jacobian")
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-10
    assert flat.shape == (3, 1000) and uses[1].shape == (3, 1000, 1000)


def empirical_ntk_trace_via_budget(model, x, budget):
    """Trace kernel from cotangents computed under ``budget`` (Linear rule by hand)."""
    cap = Capture(capture_mod.parametrised_modules(model))
    _, uses = forward_with_cotangents(model, x, cap, budget_bytes=budget)
    total = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype)
    for use in uses:
        a = use.args[0]
        total += (a @ a.T + 1) * torch.einsum("ick,jck->ij", use.grad, use.grad)
    return total


class _Opaque(torch.autograd.Function):
    """A custom Function whose backward reads a Python number: not batchable by vmap."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        scale = 1.0 if g.abs().sum().item() >= 0 else 0.0
        return scale * g * (1 - torch.tanh(x) ** 2)


class OpaqueNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(_Opaque.apply(self.a(x)))


def test_unbatchable_backward_falls_back_once(rng):
    model = seeded(OpaqueNet)
    x = torch.randn(6, 5, generator=rng, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="sequential backward passes"):
        got = empirical_ntk(model, x, block_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = empirical_ntk(model, x, block_size=2)
    assert torch.equal(got, again)
    ref = loop_ntk(model, x)
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-10


def loop_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Θ (n, n, k, k) from one plain autograd backward per sample and output (no torch.func)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    n, k = x.shape[0], jac.shape[0] // x.shape[0]
    return (jac @ jac.T).reshape(n, k, n, k).permute(0, 2, 1, 3)


def test_other_errors_are_not_swallowed(rng):
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return _Fail.apply(self.lin(x))

    class _Fail(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise ValueError("user backward failed")

    with pytest.raises(ValueError, match="user backward failed"):
        empirical_ntk(seeded(Boom), torch.randn(2, 3, dtype=torch.float64))


def test_mlp_many_outputs_exact(rng):
    model = seeded(mlp, nn.Tanh, 37)
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    got = empirical_ntk(model, x)
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-10
