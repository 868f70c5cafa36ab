"""The run summary on constructed histories: the rate fit against scipy, the envelope
inequality against a direct evaluation, and a verdict that keeps what is certified apart
from what is estimated."""

from __future__ import annotations

import math

import pytest

from lplr_fast.training.analysis import envelope_check, fit_rate, summarise

scipy_stats = pytest.importorskip("scipy.stats")


def _history(losses, lambdas, regions=None, ntk_every=5, lr=0.1):
    rows = []
    for t, loss in enumerate(losses):
        row = {"step": t, "loss": loss, "grad_norm_sq": 1.0, "pl_ratio": 0.5,
               "param_drift": 0.01 * t, "lr": lr}  # fmt: skip
        if t % ntk_every == 0:
            lam = lambdas[t // ntk_every]
            row.update(lambda_min_lower=lam, lambda_min_upper=lam * 1.01,
                       lambda_max_lower=2.0, lambda_max_upper=2.0,
                       ntk_drift_op=0.0, ntk_drift_fro=0.0, lipschitz_est=1.0,
                       mu_region_est=(regions or [lam] * len(lambdas))[t // ntk_every])  # fmt: skip
        rows.append(row)
    return rows


def _summary(history, lr=0.1, **kw):
    args = dict(lr=lr, l_star=0.0, eps=2.0**-52, window=None, status="completed",
                pl_comparable=True)  # fmt: skip
    return summarise(history, **{**args, **kw})


@pytest.mark.parametrize("seed", range(5))
def test_fit_rate_matches_scipy(seed):
    import random

    rng = random.Random(seed)
    steps = sorted(rng.sample(range(200), 30))
    subs = [math.exp(-0.03 * t + rng.gauss(0, 0.2)) for t in steps]
    rate, r2 = fit_rate(list(zip(steps, subs, strict=True)))
    ref = scipy_stats.linregress(steps, [math.log(v) for v in subs])
    assert math.isclose(rate, math.exp(ref.slope), rel_tol=1e-12)
    assert math.isclose(r2, ref.rvalue**2, rel_tol=1e-10)
    assert math.isnan(fit_rate([(0, 1.0), (1, 0.5)])[0])  # too few points
    assert fit_rate([(0, 1.0), (1, 0.5), (2, 0.25)]) == pytest.approx((0.5, 1.0))


def test_envelope_matches_a_direct_product():
    lr, lambdas = 0.1, [0.5, 0.3, 0.2, 0.4]
    losses = [1.0]
    for t in range(1, 20):
        mu = lambdas[(t - 1) // 5]
        losses.append(losses[-1] * (1 - lr * mu) * 0.999)  # a bit faster than the bound
    history = _history(losses, lambdas, lr=lr)
    held, worst, step = envelope_check(history, (0, 19), lr, 0.0, 1e-12)
    direct = [
        losses[t] / math.prod(1 - lr * lambdas[s // 5] for s in range(t)) for t in range(1, 20)
    ]
    assert held is True and math.isclose(worst, max(direct), rel_tol=1e-12)
    assert step == 1 + max(range(19), key=lambda i: direct[i])
    # one loss above the envelope breaks it, and the step is named
    history[12]["loss"] *= 1.05
    held, worst, step = envelope_check(history, (0, 19), lr, 0.0, 1e-12)
    assert held is False and step == 12 and worst > 1
    # η·μ ≥ 1: the product is meaningless, nothing is claimed
    held, worst, step = envelope_check(history, (0, 19), 3.0, 0.0, 1e-12)
    assert held is None and math.isnan(worst) and step is None


def test_pl_certified_path_with_a_negative_region_estimate_is_not_a_failure():
    losses = [0.9**t for t in range(21)]
    history = _history(losses, [0.2, 0.15, 0.1, 0.12, 0.11], regions=[0.2, 0.05, -0.1, -0.3, -0.5])
    s = _summary(history, lr=0.5)
    assert s["pl_certified_along_path"] is True and s["pl_cert_min"] == 0.1
    assert s["stayed_local"] is False and s["mu_region_est_final"] == -0.5
    v = s["verdict"]
    assert "PL certified at every NTK step (min μ ≥ 0.1)" in v
    assert "region estimate μ̂ = λ₀ − L̂·r not positive throughout" in v and "estimate" in v
    assert "left" not in v and "fail" not in v


def test_verdict_parts_when_not_certified_or_not_gd():
    history = _history([0.9**t for t in range(11)], [0.2, -0.01, 0.1])
    s = _summary(history, lr=0.5)
    assert s["pl_certified_along_path"] is False and s["pl_cert_first_failure"] == 5
    assert "PL not certified along the path" in s["verdict"]
    fast = _summary(history, certified=False)
    assert math.isnan(fast["pl_cert_min"]) and fast["envelope_held"] is None
    assert "PL not certified: uncertified bounds" in fast["verdict"]
    sgd = _summary(history, plain_gd=False)
    assert sgd["envelope_held"] is None and "without momentum" in sgd["envelope_note"]
    negative_l_star = _summary(history, l_star=-0.1)
    assert "L* < 0" in negative_l_star["verdict"]


def test_low_r2_is_called_out():
    noisy = [1.0, 0.2, 0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.9, 0.15, 0.85]
    s = _summary(_history(noisy, [0.1, 0.1, 0.1]))
    assert s["fit_r2"] < 0.9 and "not meaningful" in s["verdict"]
