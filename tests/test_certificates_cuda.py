"""The certificates on a CUDA device (float64 cuSOLVER Cholesky, cuBLAS products, the PyTorch
faces of the reductions): the same exact truths as test_certificate_properties.py.

Skipped without a GPU. ``LPLR_CERT_DEVICE=cpu`` runs them on the CPU (to check the tests)."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lplr_fast import StreamingBounds, eig_bounds, ntk_distance

from .exact import ExactSpectrum
from .test_certificate_properties import (
    LargeSpec,
    build_large,
    build_small,
    cases,
    contains,
    feed_tiles,
    small_specs,
    tilings,
)
from .test_certificate_regressions import WELL_CONDITIONED

DEVICE = os.environ.get("LPLR_CERT_DEVICE", "cuda")
pytestmark = [] if DEVICE == "cpu" else [pytest.mark.cuda]


@cases(300)
@given(spec=small_specs, upper=st.booleans(), data=st.data())
def test_small_on_device(spec, upper, data):
    a = build_small(spec)
    exact = ExactSpectrum(a.double())
    dev = a.to(DEVICE)
    for method in ("dense", "cholesky"):
        b = eig_bounds(dev, method=method)
        assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), (method, b)
        assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), (method, b)
    b = eig_bounds(dev, method="lanczos")
    below, at, _ = exact.counts(b.lambda_min_upper)
    assert below + at >= 1
    if spec.kind != "asymmetric":
        stream = StreamingBounds(spec.n, upper=upper, psd=False)
        feed_tiles(stream, dev.double(), data.draw(tilings(spec.n, upper)), 1)
        sb = stream.bounds()
        assert exact.min_in(sb.lambda_min_lower, sb.lambda_min_upper)
        assert exact.max_in(sb.lambda_max_lower, sb.lambda_max_upper)
        got = ntk_distance(torch.zeros_like(dev), dev, 2)
        assert got.certified and exact.norm2_in(got.lower, got.upper)


@pytest.mark.parametrize("k", [-1070, -1000, 0, 1000, 1018])
def test_scales_on_device(k):
    from lplr_fast.spectrum.rounding import scale_tensor

    a = scale_tensor(WELL_CONDITIONED, k)
    exact = ExactSpectrum(a)
    for method in ("dense", "cholesky", "auto"):
        b = eig_bounds(a.to(DEVICE), method=method)
        assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), b
        assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), b


@pytest.mark.parametrize("n", [257, 1500, 6000])
@pytest.mark.parametrize("spectrum", ["psd", "indefinite", "clustered"])
def test_large_on_device(n, spectrum):
    spec = LargeSpec(n, spectrum, 6, 5, -300 if n == 1500 else 0, n)
    a, d, k, _ = build_large(spec)
    lo_true = Fraction(min(d.tolist())) * Fraction(2) ** k
    hi_true = Fraction(max(d.tolist())) * Fraction(2) ** k
    dev = a.to(DEVICE)
    b = eig_bounds(dev)
    assert b.certified_min and b.certified_max
    assert contains(b.lambda_min_lower, b.lambda_min_upper, lo_true), b
    assert contains(b.lambda_max_lower, b.lambda_max_upper, hi_true), b
    if n <= 1500:
        stream = StreamingBounds(n, psd=spectrum == "psd")
        for r in range(0, n, 512):
            for c in range(r, n, 512):
                rows, cols = slice(r, min(n, r + 512)), slice(c, min(n, c + 512))
                stream.update(rows, cols, dev[rows, cols])
        sb = stream.bounds()
        assert contains(sb.lambda_min_lower, sb.lambda_min_upper, lo_true)
        assert contains(sb.lambda_max_lower, sb.lambda_max_upper, hi_true)
        moved, _, _, _ = build_large(spec, d + 1)
        dist = ntk_distance(dev, moved.to(DEVICE))
        assert contains(dist.lower, dist.upper, Fraction(2) ** k), dist
        assert dist.upper - dist.lower <= 1e-5 * math.ldexp(1.0, k)
