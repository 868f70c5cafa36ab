"""The model zoo: every model exact to 1e-10 in float64 against the Jacobian reference for
full / trace / diagonal, with x2 = None and x2 ≠ x1, and model state (parameters, buffers,
flags, hooks) unchanged by every call."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lplr_fast import empirical_ntk, ntk_blocks

from .zoo import REFUSED, ZOO, K, build, build_refused, inputs, reduce, rel

MODES = ("full", "trace", "diagonal")


def state(model: nn.Module) -> dict:
    """Everything a call could change: parameters (identity, class, flag, values), buffers,
    training flags, hooks."""
    params = {
        name: (id(p), type(p), p.requires_grad, p.detach().clone())
        for name, p in model.named_parameters(remove_duplicate=False)
    }
    buffers = {
        name: (id(b), b.detach().clone()) for name, b in model.named_buffers(remove_duplicate=False)
    }
    modules = {
        name: (
            m.training,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            tuple(m._parameters),
            tuple(m._buffers),
        )
        for name, m in model.named_modules(remove_duplicate=False)
    }
    return {"params": params, "buffers": buffers, "modules": modules}


def assert_same_state(before: dict, after: dict) -> None:
    assert before["modules"] == after["modules"]
    assert before["params"].keys() == after["params"].keys()
    for name, (pid, cls, flag, value) in before["params"].items():
        pid2, cls2, flag2, value2 = after["params"][name]
        assert (pid, cls, flag) == (pid2, cls2, flag2), name
        assert torch.equal(value, value2), name
    assert before["buffers"].keys() == after["buffers"].keys()
    for name, (bid, value) in before["buffers"].items():
        bid2, value2 = after["buffers"][name]
        assert bid == bid2 and torch.equal(value, value2), name


def test_zoo_is_large_enough():
    assert len(ZOO) >= 40


SLOW = {"transformer_classifier", "encoder_norm_first", "multi_rank"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(ZOO)]
)
def test_zoo_model_is_exact_and_untouched(name):
    gen = torch.Generator().manual_seed(hash(name) % 2**31)
    model = build(name)
    kind = ZOO[name][1]
    x1, x2 = inputs(kind, 5, gen), inputs(kind, 3, gen)
    before = state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations inside torch, vmap performance notes
        for cross in (False, True):
            second = x2 if cross else None
            ref_full = empirical_ntk(model, x1, second, implementation="jacobian")
            assert_same_state(before, state(model))
            assert ref_full.norm() > 0
            for compute in MODES:
                got = empirical_ntk(model, x1, second, compute=compute, block_size=2)
                assert_same_state(before, state(model))
                assert rel(got, reduce(ref_full, compute)) <= 1e-10, (cross, compute)


REVERSE_MODE = ["mha_batch_first", "lstm", "custom_functions", "two_names", "tied_embedding"]


@pytest.mark.parametrize("name", REVERSE_MODE)
def test_ntk_vp_reference_runs_everywhere(name):
    gen = torch.Generator().manual_seed(7)
    model = build(name)
    kind = ZOO[name][1]
    x1, x2 = inputs(kind, 4, gen), inputs(kind, 3, gen)
    before = state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = empirical_ntk(model, x1, x2, implementation="jacobian")
        got = empirical_ntk(model, x1, x2, implementation="ntk_vp")
    assert_same_state(before, state(model))
    assert rel(got, ref) <= 1e-10


@pytest.mark.parametrize("name", ["transformer_classifier", "lstm", "tied_embedding"])
def test_layer_parts_match_the_reference(name):
    gen = torch.Generator().manual_seed(3)
    model = build(name)
    x = inputs(ZOO[name][1], 4, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total, parts = empirical_ntk(model, x, return_layers=True, block_size=3)
        _, ref_parts = empirical_ntk(model, x, return_layers=True, implementation="jacobian")
    assert set(parts) == set(ref_parts)
    for part, value in parts.items():
        assert rel(value, ref_parts[part]) <= 1e-10, part
    torch.testing.assert_close(sum(parts.values()), total, rtol=1e-12, atol=1e-14)


def test_sequence_first_when_length_equals_batch():
    """The sequence axis has the batch's length: the batch axis is still found."""
    gen = torch.Generator().manual_seed(5)
    model = build("sequence_first")
    x = torch.randn(5, 5, 4, generator=gen, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    for bs in (5, 2, None):
        assert rel(empirical_ntk(model, x, block_size=bs), ref) <= 1e-10


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_works_under_no_grad_and_inference_mode(context):
    gen = torch.Generator().manual_seed(2)
    model = build("transformer_classifier")
    x = inputs("tokens", 4, gen)
    ref = empirical_ntk(model, x, implementation="jacobian")
    manager = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with manager:
        xs = inputs("vector", 3, gen)
        got = empirical_ntk(model, x)
        mlp_model = build("mlp_tanh")  # tensors made under the context (a copy is used)
        tiles = list(ntk_blocks(mlp_model, xs, block_size=2))
        ref_jac = empirical_ntk(mlp_model, xs, implementation="jacobian")
    assert rel(got, ref) <= 1e-10
    assert len(tiles) == 3 and ref_jac.shape == (3, 3, 3, 3)
    assert torch.is_grad_enabled()


def test_mixed_dtypes_get_a_clear_error():
    model = build("mlp_tanh").float()
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"pass dtype=torch.float64"):
        empirical_ntk(model, x)
    assert rel(empirical_ntk(model, x, dtype=torch.float64), empirical_ntk(
        model.double(), x, implementation="jacobian"
    )) <= 1e-10  # fmt: skip
    mixed = build("mlp_tanh")
    mixed[0].float()
    with pytest.raises(TypeError, match=r"mix dtypes .* pass dtype="):
        empirical_ntk(mixed, x)


class BatchCoupled(nn.Module):
    """Samples interact (centring over the batch): no per-sample NTK exists."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h - h.mean(dim=0, keepdim=True)))


def test_batch_coupled_model_is_refused_not_wrong():
    torch.manual_seed(0)
    model = BatchCoupled().double()
    x = torch.randn(9, 6, dtype=torch.float64)
    before = state(model)
    with pytest.raises(ValueError, match="depends on the other samples"):
        empirical_ntk(model, x, block_size=4)
    assert_same_state(before, state(model))


def test_refusals_leave_the_model_untouched():
    model = build("resnet_bn_ln").train()
    before = state(model)
    with pytest.raises(ValueError, match="BatchNorm"):
        empirical_ntk(model, torch.randn(3, 2, 7, 7, dtype=torch.float64))
    drop = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.3), nn.Linear(4, 3)).double()
    before_drop = state(drop)
    with pytest.raises(ValueError, match="dropout"):
        empirical_ntk(drop, torch.randn(3, 6, dtype=torch.float64))
    assert_same_state(before, state(model))
    assert_same_state(before_drop, state(drop))


def test_torchscript_is_refused_clearly():
    model = torch.jit.script(build("mlp_tanh"))
    with pytest.raises(NotImplementedError, match="TorchScript"):
        empirical_ntk(model, torch.randn(3, 6, dtype=torch.float64))


class Overflow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, K)

    def forward(self, x):
        return torch.exp(1e3 * self.lin(x))


def test_non_finite_kernel_is_refused():
    torch.manual_seed(0)
    model = Overflow().double()
    x = 10 * torch.ones(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        empirical_ntk(model, x)
    x[1:] = 0.0  # finite outputs on the first rows, overflowing gradients in the rest
    with pytest.raises((ValueError, RuntimeError), match="NaN or Inf"):
        empirical_ntk(model, x.flip(0))


def test_out_of_another_dtype_is_refused():
    model = build("mlp_tanh")
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="out has dtype"):
        empirical_ntk(model, x, compute="trace", out=torch.empty(4, 4, dtype=torch.float32))


def test_single_sample_and_large_blocks():
    model = build("lstm")
    gen = torch.Generator().manual_seed(4)
    x1, x2 = inputs("sequence", 1, gen), inputs("sequence", 2, gen)
    for second in (None, x2):
        ref = empirical_ntk(model, x1, second, implementation="jacobian")
        for compute in MODES:
            got = empirical_ntk(model, x1, second, compute=compute, block_size=64)
            assert rel(got, reduce(ref, compute)) <= 1e-10


def test_input_requiring_grad_is_left_alone():
    model = build("mlp_tanh")
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    got = empirical_ntk(model, x)
    assert x.grad is None and not got.requires_grad
    assert rel(got, empirical_ntk(model, x.detach(), implementation="jacobian")) <= 1e-10


def test_reentrant_checkpoint_error_names_the_fix():
    """torch's reentrant checkpoint cannot run under autograd.grad; its message says what to do."""
    torch.manual_seed(0)

    class Reentrant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre, self.a, self.out = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, K)

        def forward(self, x):
            h = torch.utils.checkpoint.checkpoint(self.a, self.pre(x), use_reentrant=True)
            return self.out(torch.tanh(h))

    model = Reentrant().double()
    before = state(model)
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        empirical_ntk(model, torch.randn(3, 6, dtype=torch.float64))
    assert_same_state(before, state(model))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_model_gets_a_clear_error_and_is_untouched(name):
    """Models without a well-defined per-sample NTK (or that the structured path cannot
    follow) are refused with a message naming the cause and what to do, for every mode."""
    _, kind, error, pattern = REFUSED[name]
    gen = torch.Generator().manual_seed(11)
    model = build_refused(name)
    x = inputs(kind, 6, gen)
    before = state(model) if name != "lazy_uninitialised" else None
    x_before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for compute in MODES:
            with pytest.raises(error, match=pattern):
                empirical_ntk(model, x, compute=compute, block_size=4)
            if before is not None:
                assert_same_state(before, state(model))
            assert torch.equal(x, x_before)


def test_mixture_of_experts_runs_with_the_reference_it_names():
    gen = torch.Generator().manual_seed(12)
    model = build_refused("mixture_of_experts")
    x = inputs("vector", 8, gen)
    assert empirical_ntk(model, x, implementation="jacobian").shape == (8, 8, K, K)
