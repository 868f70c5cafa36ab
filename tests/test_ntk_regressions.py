"""Regressions from the hostile review of issue 11 (2026-11-28): each test failed before its
fix. Numbers in the names follow the review's items."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from lplr_fast import ProbeMismatchError, empirical_ntk, ntk_blocks
from lplr_fast.ntk import engine, probe

from .zoo import K, OutlierHead, build, inputs, reduce, rel

MODES = ("full", "trace", "diagonal")


def jacobian_of_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians (n, k, P) of what model(x_i) computes from the model's current
    state, each sample alone, by plain autograd on a fresh copy of the model."""
    rows = []
    for xi in x:
        work = copy.deepcopy(model)
        params = list(work.parameters())
        out = work(xi[None].clone()).reshape(-1)
        rows.append(
            torch.stack([
                torch.cat([g.flatten() for g in torch.autograd.grad(o, params, retain_graph=True)])
                for o in out
            ])
        )  # fmt: skip
    return torch.stack(rows)


def per_sample_ntk(model: nn.Module, x1: torch.Tensor, x2=None) -> torch.Tensor:
    """The full kernel from each sample's own Jacobian (independent of the engine)."""
    j1 = jacobian_of_forward(model, x1)
    j2 = j1 if x2 is None else jacobian_of_forward(model, x2)
    return torch.einsum("iap,jbp->ijab", j1, j2)


# -- 1: float32 kernels of wide models must pass their own check -------------------------------


def wide_mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )


def test_1_float32_wide_mlp_trace_and_diagonal_pass_the_probe():
    """Width 2048 (4.3M parameters): the float32 kernels are right (~1e-7) and the probe's
    own sums (float64 now) must not call them wrong."""
    model = wide_mlp(2048)
    x = torch.randn(96, 64, generator=torch.Generator().manual_seed(1))
    ref = empirical_ntk(model, x, compute="diagonal", dtype=torch.float64, verify="off")
    for compute in ("trace", "diagonal"):
        got = empirical_ntk(model, x, compute=compute)  # raised ProbeMismatchError before
        want = ref.sum(-1) if compute == "trace" else ref
        assert rel(got.double(), want) <= 1e-5


@pytest.mark.slow
def test_1_float32_full_kernel_of_a_38m_parameter_mlp_passes_the_probe():
    model = wide_mlp(6144)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    empirical_ntk(model, x)  # raised ProbeMismatchError before
    empirical_ntk(model, x, x[:8] * 0.5)


def test_1_probe_sums_are_float64_with_bounded_chains():
    """The probe's float64 tree sums: error far below float32 rounding on 10⁷ positive terms,
    and the chain length used by the tolerance bounds every addition path."""
    gen = torch.Generator().manual_seed(3)
    terms = torch.rand(10_000_000, generator=gen, dtype=torch.float32)
    exact = terms.double().sum().item()  # float64 reference, ~1e-16 relative
    got = probe.fsum(terms.double()).item()
    assert abs(got - exact) <= 1e-12 * exact
    naive = terms.sum().item()  # float32 accumulation: the old probe's arithmetic
    assert abs(naive - exact) > 100 * abs(got - exact)
    assert probe.fold_chain(1) >= 1 and probe.fold_chain(10**12) <= 8 * probe.FOLD


# -- 2: trace / diagonal probes cover every sample ---------------------------------------------


def outlier_inputs(n: int, rows: list[int], seed: int) -> torch.Tensor:
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] = x[:, 0].clamp(-2.0, 2.0)
    x[rows, 0] = 4.0  # only these rows take the functional path through head.weight
    return x


def test_2_extra_path_on_unvalidated_rows_is_flagged_in_every_mode():
    torch.manual_seed(0)
    model = OutlierHead().double()
    x = outlier_inputs(20, [11, 17], seed=4)
    for compute in MODES:
        ref = empirical_ntk(model, x, compute=compute, implementation="jacobian")
        wrong = empirical_ntk(model, x, compute=compute, block_size=8, verify="off")
        assert rel(wrong, ref) > 1e-3  # the routing check (first rows) misses the extra path
        with pytest.raises(ProbeMismatchError, match="self-check failed"):
            empirical_ntk(model, x, compute=compute, block_size=8)
        with pytest.raises(ProbeMismatchError):
            list(ntk_blocks(model, x, compute=compute, block_size=8))
        with pytest.warns(RuntimeWarning, match="Falling back"):
            got = empirical_ntk(model, x, compute=compute, block_size=8, on_mismatch="fallback")
        assert rel(got, ref) <= 1e-10
    with pytest.raises(ProbeMismatchError):  # no certified bounds of the wrong matrix
        empirical_ntk(model, x, compute="trace", bounds=True)


def test_2_extra_path_only_in_x2_is_flagged():
    torch.manual_seed(0)
    model = OutlierHead().double()
    x1, x2 = outlier_inputs(9, [], seed=5), outlier_inputs(13, [10], seed=6)
    for compute in MODES:
        with pytest.raises(ProbeMismatchError):
            empirical_ntk(model, x1, x2, compute=compute, block_size=4)


def test_2_sampled_probe_is_an_explicit_opt_in(monkeypatch):
    """verify="sampled" probes one sample in 64 in trace / diagonal mode (cheaper, can miss a
    sample); the default probes all of them."""
    model = build("mlp_tanh")
    x = inputs("vector", 300, torch.Generator().manual_seed(7))
    reports = []
    real = engine._DeferredProbe.finish

    def keep(self):
        reports.append(real(self))
        return reports[-1]

    monkeypatch.setattr(engine._DeferredProbe, "finish", keep)
    ref = empirical_ntk(model, x, compute="diagonal", implementation="jacobian")
    for verify in ("probe", "sampled"):
        assert rel(empirical_ntk(model, x, compute="diagonal", verify=verify), ref) <= 1e-10
    assert [r.samples for r in reports] == [300, 5]
    with pytest.raises(ValueError, match="verify must be"):
        empirical_ntk(model, x, verify="some")


# -- 3: backward passes that couple samples ------------------------------------------------------


@pytest.mark.parametrize("name", ["embedding_grad_by_freq", "backward_couples_samples"])
def test_3_backward_coupling_gives_the_per_sample_kernel_for_any_block(name):
    model = build(name)
    gen = torch.Generator().manual_seed(8)
    kind = "tokens" if name == "embedding_grad_by_freq" else "vector"
    x = inputs(kind, 7, gen)
    if kind == "tokens":
        x = x % 3  # many repeated tokens: the batch's counts differ from each sample's
    ref = per_sample_ntk(model, x)
    assert rel(empirical_ntk(model, x, implementation="jacobian"), ref) <= 1e-10
    for bs in (None, 1, 2, 3, 7):
        for compute in MODES:
            got = empirical_ntk(model, x, compute=compute, block_size=bs)
            assert rel(got, reduce(ref, compute)) <= 1e-10, (bs, compute)


def test_3_token_repeats_only_after_the_validation_rows():
    """The first samples share no token (the batch's counts equal each sample's there), later
    ones do: still each sample's own gradient, in every mode and block size."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(40, 3, scale_grad_by_freq=True), nn.Flatten(), nn.Tanh(), nn.Linear(12, K)
    ).double()
    x = torch.cat([torch.arange(16).view(4, 4), torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])])
    ref = per_sample_ntk(model, x)
    for bs in (None, 2, 6):
        for compute in MODES:
            got = empirical_ntk(model, x, compute=compute, block_size=bs)
            assert rel(got, reduce(ref, compute)) <= 1e-10, (bs, compute)


class MixFlagged(torch.autograd.Function):
    """Identity forward; the backward mixes the cotangents of the flagged samples of the batch
    (a coupling that the first samples, all unflagged, do not show)."""

    @staticmethod
    def forward(ctx, h, flag):
        ctx.save_for_backward(flag)
        return h.clone()

    @staticmethod
    def backward(ctx, g):
        (flag,) = ctx.saved_tensors
        f = flag[:, None].to(g.dtype)
        return g + 0.5 * f * ((f * g).sum(dim=0, keepdim=True) - g), None


class FlaggedCoupling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, K)

    def forward(self, x):
        h = MixFlagged.apply(torch.tanh(self.a(x)), x[:, 0] > 3.0)
        return self.out(torch.tanh(self.b(h)))


def test_3_backward_coupling_beyond_the_validation_rows_is_flagged():
    """Flagged rows 9 and 13 share the engine's block [8, 16) and the first rows (the routing
    check's) are unflagged: the kernel is wrong there, the probe says so in every mode, and
    the fallback (per-sample Jacobians) is exact."""
    torch.manual_seed(0)
    model = FlaggedCoupling().double()
    x = outlier_inputs(20, [9, 13], seed=14)
    ref = per_sample_ntk(model, x)
    for compute in MODES:
        wrong = empirical_ntk(model, x, compute=compute, block_size=8, verify="off")
        assert rel(wrong, reduce(ref, compute)) > 1e-3
        with pytest.raises(ProbeMismatchError):
            empirical_ntk(model, x, compute=compute, block_size=8)
        with pytest.warns(RuntimeWarning, match="Falling back"):
            got = empirical_ntk(model, x, compute=compute, block_size=8, on_mismatch="fallback")
        assert rel(got, reduce(ref, compute)) <= 1e-10


def test_probe_blocks_are_offset_from_the_engines():
    """Defensive: a backward coupling inside a block would give both sides the same coupled
    sums if the probe's blocks were the engine's."""
    assert probe._block_starts(20, 8) == [0, 4, 12]
    assert probe._block_starts(5, 8) == [0, 2]
    assert probe._block_starts(1, 8) == [0]
    assert probe._block_starts(3, 1) == [0, 1, 2]


# -- 4: buffers restored once per forward, not before every module call ------------------------


def test_4_module_applied_twice_sees_its_own_buffer_update():
    model = build("spectral_norm_twice_train")
    x = inputs("vector", 6, torch.Generator().manual_seed(9))
    ref = per_sample_ntk(model, x)
    for implementation in ("structured", "jacobian"):
        got = empirical_ntk(model, x, implementation=implementation)
        assert rel(got, ref) <= 1e-10, implementation


# -- 6: the caller's tensors are never handed to the model ------------------------------------


@pytest.mark.parametrize("implementation", ["structured", "jacobian", "ntk_vp"])
def test_6_inputs_modified_in_place_by_the_model_are_left_alone(implementation):
    model = build("in_place_on_input")
    gen = torch.Generator().manual_seed(10)
    x1, x2 = inputs("vector", 6, gen), inputs("vector", 4, gen)
    c1, c2 = x1.clone(), x2.clone()
    ref = per_sample_ntk(copy.deepcopy(model), x1.clone(), x2.clone())
    for compute in MODES:
        got = empirical_ntk(model, x1, x2, compute=compute, implementation=implementation)
        assert torch.equal(x1, c1) and torch.equal(x2, c2)
        assert rel(got, reduce(ref, compute)) <= 1e-10
    list(ntk_blocks(model, x1, block_size=2))
    assert torch.equal(x1, c1)


# -- 8: integer and boolean inputs ------------------------------------------------------------


def test_8_integer_input_the_model_cannot_take_gets_a_clear_error():
    model = build("mlp_tanh")
    with pytest.raises(TypeError, match=r"x1 has dtype torch.int64.*floating-point"):
        empirical_ntk(model, torch.ones(3, 6, dtype=torch.long))


# -- 10: half-precision models --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_10_half_precision_model_is_refused_up_front(dtype):
    model = build("mlp_tanh").to(dtype)
    x = torch.randn(4, 6).to(dtype)
    for implementation in ("structured", "jacobian"):
        with pytest.raises(TypeError, match=r"float32 or float64.*dtype=torch.float32"):
            empirical_ntk(model, x, implementation=implementation)
    got = empirical_ntk(model, x, dtype=torch.float64)
    ref = empirical_ntk(model.double(), x.double(), implementation="jacobian")
    assert rel(got, ref) <= 1e-10


# -- 11: sparse embeddings, cached parametrizations, torch's vmap notes -----------------------


def test_11_cached_parametrization():
    torch.manual_seed(0)
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(6, 8)), nn.Tanh(), nn.Linear(8, K)
    ).double()
    x = torch.randn(6, 6, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    with parametrize.cached():
        for compute in MODES:
            got = empirical_ntk(model, x, compute=compute, block_size=4)
            assert rel(got, reduce(ref, compute)) <= 1e-10
        assert rel(empirical_ntk(model, x, implementation="jacobian"), ref) <= 1e-10


def test_11_no_vmap_performance_notes_reach_the_user():
    model = build("activations")  # nn.Bilinear: no batching rule for aten::_trilinear
    x = inputs("vector", 5, torch.Generator().manual_seed(13))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for implementation in ("structured", "jacobian", "ntk_vp"):
            for compute in MODES:
                empirical_ntk(model, x, compute=compute, implementation=implementation)
    notes = [w for w in caught if "performance drop" in str(w.message)]
    assert not notes, notes[0].message
