"""pytest-benchmark: fused Gram kernel vs the unfused PyTorch expression (same process).

python3 -m pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from lplr_fast.gram import gram_accumulate, gram_accumulate_reference

N, D, P = 1024, 512, 512


@pytest.fixture(params=[(1, "full"), (10, "trace")], ids=["k1-full", "k10-trace"])
def inputs(request):
    k, compute = request.param
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(N, D, generator=gen)
    g = torch.randn(N, k, P, generator=gen)
    out = torch.zeros((N, N, k, k) if compute == "full" else (N, N))
    return out, a, g, compute


@pytest.mark.benchmark(group="gram")
def test_fused_kernel(benchmark, inputs):
    out, a, g, compute = inputs
    benchmark(lambda: gram_accumulate(out, a, g, compute=compute, check_finite=False))


@pytest.mark.benchmark(group="gram")
def test_unfused_torch(benchmark, inputs):
    out, a, g, compute = inputs
    benchmark(lambda: gram_accumulate_reference(out, a, g, compute=compute))
