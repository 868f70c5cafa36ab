"""The random-probe self-check flags wrong kernels (a rule with a dropped term, samples on the
wrong rows, a dropped parameter), falls back exactly when asked, and the routing check
repairs wrong feature rules before any tile is computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lplr_fast
from lplr_fast import ProbeMismatchError, StreamingBounds, empirical_ntk, ntk_blocks
from lplr_fast.ntk import engine, routes, rules
from lplr_fast.ntk.rules import DenseFeatures

from .models import SmallCNN, mlp, seeded
from .zoo import build, inputs

MODES = ["full", "trace", "diagonal"]


def rel(x, ref) -> float:
    return ((x - ref).norm() / ref.norm()).item()


def drop_bias_term(monkeypatch) -> None:
    """A broken Linear Gram rule: (a_i·a_j + β)(g·g) loses its β term."""
    real = engine.accumulate_pair

    def broken(out, f1, f2, compute):
        if isinstance(f1, DenseFeatures) and f1.beta:
            f1 = DenseFeatures(f1.a, f1.g, 0.0, f1.names)
        real(out, f1, f2, compute)

    monkeypatch.setattr(engine, "accumulate_pair", broken)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("compute", MODES)
def test_broken_rule_is_flagged(compute, cross, monkeypatch, rng):
    model = seeded(mlp)
    x1 = torch.randn(9, 6, generator=rng, dtype=torch.float64)
    x2 = torch.randn(5, 6, generator=rng, dtype=torch.float64) if cross else None
    ref = empirical_ntk(model, x1, x2, compute=compute, implementation="jacobian")
    drop_bias_term(monkeypatch)
    wrong = empirical_ntk(model, x1, x2, compute=compute, block_size=4, verify="off")
    assert rel(wrong, ref) > 1e-3  # the broken rule really is wrong
    with pytest.raises(ProbeMismatchError, match="self-check failed"):
        empirical_ntk(model, x1, x2, compute=compute, block_size=4)
    with pytest.raises(ProbeMismatchError):
        list(ntk_blocks(model, x1, x2, compute=compute, block_size=4))


def test_fallback_recomputes_exactly(monkeypatch, tmp_path, rng):
    model = seeded(mlp)
    x = torch.randn(9, 6, generator=rng, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    ref_trace = empirical_ntk(model, x, compute="trace", implementation="jacobian")
    drop_bias_term(monkeypatch)
    with pytest.warns(RuntimeWarning, match="Falling back"):
        got = empirical_ntk(model, x, block_size=4, on_mismatch="fallback")
    assert rel(got, ref) <= 1e-10
    mm = np.lib.format.open_memmap(tmp_path / "k.npy", mode="w+", dtype=np.float64, shape=(9, 9))
    stream = StreamingBounds(9)
    with pytest.warns(RuntimeWarning, match="Falling back"):
        out = empirical_ntk(
            model, x, compute="trace", out=mm, bounds=stream, block_size=4, on_mismatch="fallback"
        )
    assert out is mm
    assert np.allclose(np.asarray(mm), ref_trace.numpy(), rtol=1e-12, atol=0)
    assert stream.trace == pytest.approx(float(ref_trace.trace()), rel=1e-12)
    with pytest.warns(RuntimeWarning, match="Falling back"):
        total, parts = empirical_ntk(
            model, x, return_layers=True, block_size=4, on_mismatch="fallback"
        )
    assert rel(total, ref) <= 1e-10 and set(parts) == {"0", "2", "4"}


def test_samples_on_wrong_rows_are_flagged(monkeypatch, rng):
    model = seeded(SmallCNN)
    x = torch.randn(6, 2, 7, 7, generator=rng, dtype=torch.float64)
    real = engine._tiles

    def swapped(*args, **kwargs):
        for r, c, total, parts in real(*args, **kwargs):
            if r.start == 0:
                total = total.clone()
                total[[0, 1]] = total[[1, 0]]
            yield r, c, total, parts

    monkeypatch.setattr(engine, "_tiles", swapped)
    for compute in MODES:  # n = 6: every sample is probed in trace / diagonal too
        with pytest.raises(ProbeMismatchError):
            empirical_ntk(model, x, compute=compute, block_size=3)


def test_dropped_parameter_is_rescued_by_routing_then_caught_by_probe(monkeypatch, rng):
    model = seeded(mlp)
    x = torch.randn(7, 6, generator=rng, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    real_build = engine.build_plan

    def drop_middle_layer(*args, **kwargs):
        plan = real_build(*args, **kwargs)
        del plan.routes["2"]
        return plan

    monkeypatch.setattr(engine, "build_plan", drop_middle_layer)
    # the routing check sees that layer 2's gradient is missing and routes it generically
    assert rel(empirical_ntk(model, x, block_size=3), ref) <= 1e-10
    assert routes(model, x)["2.weight"].startswith("generic")
    # without the routing check, the probe catches the dropped parameter
    monkeypatch.setattr(engine, "_verify_routes", lambda job, plan: 1000)
    with pytest.raises(ProbeMismatchError):
        empirical_ntk(model, x, block_size=3)


def test_wrong_feature_rule_is_rerouted(monkeypatch, rng):
    model = seeded(mlp)
    x = torch.randn(7, 6, generator=rng, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    real = rules._linear_features

    def scaled(use, route):
        f = real(use, route)
        return DenseFeatures(f.a * 1.01, f.g, f.beta, f.names)

    monkeypatch.setattr(rules, "_linear_features", scaled)
    assert rel(empirical_ntk(model, x), ref) <= 1e-10
    assert all(r.startswith("generic") for n, r in routes(model, x).items() if "weight" in n)


def test_routes_are_structured_for_plain_models(rng):
    assert set(routes(seeded(mlp), torch.randn(3, 6, dtype=torch.float64)).values()) == {"linear"}
    cnn = routes(seeded(SmallCNN), torch.randn(3, 2, 7, 7, dtype=torch.float64))
    assert {cnn["c1.weight"], cnn["c1d.weight"], cnn["head.weight"]} == {"conv", "linear"}
    head = routes(build("functional_head"), inputs("vector", 3, rng))
    assert head["body.weight"] == "linear"
    assert head["head.weight"].startswith("generic: module 'head' is never called")
    lstm = routes(build("lstm"), inputs("sequence", 3, rng))
    assert lstm["lstm.weight_hh_l0"] == "module (autograd)" and lstm["head.weight"] == "linear"
    for name, prefix in (
        ("mha_sequence_first", "att"),
        ("transformer_classifier", "encoder.layers.1.self_attn"),
    ):
        kind = "tokens" if name == "transformer_classifier" else "sequence"
        att = routes(build(name), inputs(kind, 3, rng))
        for param in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            assert att[f"{prefix}.{param}"] == "attention"


def test_float32_kernels_pass_their_check(rng):
    for model, x in (
        (seeded(SmallCNN).float(), torch.randn(6, 2, 7, 7, generator=rng)),
        (build("transformer_classifier").float(), inputs("tokens", 5, rng)),
    ):
        for compute in MODES:
            empirical_ntk(model, x, compute=compute, block_size=4)  # raises on a mismatch


def test_bad_verify_options(rng):
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="verify"):
        empirical_ntk(seeded(mlp), x, verify="yes")
    with pytest.raises(ValueError, match="on_mismatch"):
        empirical_ntk(seeded(mlp), x, on_mismatch="ignore")
    assert lplr_fast.ProbeMismatchError is ProbeMismatchError
