"""The fused Gram kernel (C++ CPU and CUDA faces) against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch

import lplr_fast
from lplr_fast.gram import gram_accumulate, gram_accumulate_reference, gram_out_shape

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
MODES = ["full", "trace", "diagonal"]


def make_inputs(n1, n2, d, k, p, dtype, device="cpu", gen=None, noncontig=False):
    def rand(*shape):
        if noncontig:  # build the transpose and view it back: strides are not row-major
            t = torch.randn(*reversed(shape), generator=gen, dtype=torch.float64)
            t = t.permute(*reversed(range(len(shape))))
        else:
            t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return t.to(dtype=dtype, device=device)

    return rand(n1, d), rand(n1, k, p), rand(n2, d), rand(n2, k, p)


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def check(
    compute,
    n1,
    n2,
    d,
    k,
    p,
    dtype,
    symmetric,
    device="cpu",
    gen=None,
    beta=0.7,
    noncontig=False,
    route="auto",
):
    a1, g1, a2, g2 = make_inputs(n1, n2, d, k, p, dtype, device, gen, noncontig)
    if symmetric:
        n2, a2, g2 = n1, None, None
    init = torch.randn(gram_out_shape(n1, n2, k, compute), generator=gen, dtype=torch.float64)
    ref = gram_accumulate_reference(
        init.clone(),
        a1.double().cpu(),
        g1.double().cpu(),
        None if a2 is None else a2.double().cpu(),
        None if g2 is None else g2.double().cpu(),
        beta=beta,
        compute=compute,
    )
    out = init.to(dtype=dtype, device=device)
    result = gram_accumulate(out, a1, g1, a2, g2, beta=beta, compute=compute, route=route)
    assert result.data_ptr() == out.data_ptr(), "accumulation must be in place"
    assert rel_err(out.cpu(), ref) <= TOL[dtype]


@pytest.mark.parametrize("compute", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (7, 5, 3, 9), (33, 70, 17, 5), (130, 67, 64, 33)])
def test_cpu_matches_reference(compute, dtype, symmetric, k, sizes, rng):
    n1, n2, d, p = sizes
    check(compute, n1, n2, d, k, p, dtype, symmetric, gen=rng)


@pytest.mark.parametrize("compute", MODES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_cpu_noncontiguous_inputs(compute, symmetric, rng):
    check(compute, 19, 23, 6, 3, 8, torch.float64, symmetric, gen=rng, noncontig=True)


@pytest.mark.parametrize("beta", [0.0, 1.0, -2.5])
def test_beta(beta, rng):
    check("full", 9, 11, 4, 2, 5, torch.float64, False, gen=rng, beta=beta)


def test_large_symmetric_spans_several_row_chunks(rng):
    # 4 * 1100 * 1100 * 1 > 2^22 entries per chunk budget: exercises chunk boundaries.
    check("full", 1100, 1100, 3, 2, 3, torch.float64, True, gen=rng)


def test_symmetric_result_is_symmetric(rng):
    a, g, _, _ = make_inputs(40, 40, 6, 3, 7, torch.float64, gen=rng)
    out = torch.zeros(40, 40, 3, 3, dtype=torch.float64)
    gram_accumulate(out, a, g)
    mat = out.permute(0, 2, 1, 3).reshape(120, 120)
    assert torch.equal(mat, mat.T)


def test_compiled_module_is_used():
    info = lplr_fast.backend_info()
    assert info["compiled"] and info["cpu"] and info["openmp"]


# ---- bad input ------------------------------------------------------------------------


def _ok(dtype=torch.float64):
    a = torch.randn(4, 3, dtype=dtype)
    g = torch.randn(4, 2, 5, dtype=dtype)
    return torch.zeros(4, 4, 2, 2, dtype=dtype), a, g


def test_bad_rank_names_argument():
    out, a, g = _ok()
    with pytest.raises(ValueError, match="g1 must be 3-D"):
        gram_accumulate(out, a, g[:, 0])


def test_mismatched_samples():
    out, a, g = _ok()
    with pytest.raises(ValueError, match="g1 has 3 samples but a1 has 4"):
        gram_accumulate(out, a, g[:3])


def test_mismatched_features_cross():
    out, a, g = _ok()
    with pytest.raises(ValueError, match="a2 has d_in=2"):
        gram_accumulate(out, a, g, a[:, :2], g)


def test_wrong_out_shape():
    _, a, g = _ok()
    with pytest.raises(ValueError, match=r"out must have shape \(n1, n2\)"):
        gram_accumulate(torch.zeros(4, 4, 2, 2, dtype=torch.float64), a, g, compute="trace")


def test_integer_dtype_is_type_error():
    out, a, g = _ok()
    with pytest.raises(TypeError, match="a1 must be float32 or float64"):
        gram_accumulate(out, a.long(), g)


def test_mixed_dtypes_is_type_error():
    out, a, g = _ok()
    with pytest.raises(TypeError, match="g1 has dtype"):
        gram_accumulate(out, a, g.float())


def test_non_finite_input_rejected():
    out, a, g = _ok()
    g[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="g1 contains NaN or Inf"):
        gram_accumulate(out, a, g)
    a[0, 0] = float("inf")
    with pytest.raises(ValueError, match="a2 contains NaN or Inf"):
        gram_accumulate(
            out, torch.randn(4, 3, dtype=torch.float64), g.nan_to_num(), a, g.nan_to_num()
        )


def test_non_finite_beta_rejected():
    out, a, g = _ok()
    with pytest.raises(ValueError, match="beta must be finite"):
        gram_accumulate(out, a, g, beta=float("nan"))


def test_unknown_compute_mode():
    out, a, g = _ok()
    with pytest.raises(ValueError, match="compute must be one of"):
        gram_accumulate(out, a, g, compute="sum")


def test_half_a2_g2_pair_rejected():
    out, a, g = _ok()
    with pytest.raises(ValueError, match="a2 and g2 must both be given"):
        gram_accumulate(out, a, g, a, None)


def test_noncontiguous_out_rejected():
    _, a, g = _ok()
    out = torch.zeros(4, 4, 2, 2, dtype=torch.float64).transpose(0, 1)
    with pytest.raises(ValueError, match="out must be contiguous"):
        gram_accumulate(out, a, g)


def test_cuda_tensor_without_cuda_build_or_mixed_devices():
    if torch.cuda.is_available():
        out, a, g = _ok()
        with pytest.raises(ValueError, match="all arguments must be on one device"):
            gram_accumulate(out, a.cuda(), g)
    else:
        pytest.skip("mixed-device check needs a CUDA device")


# ---- CUDA face ----------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("compute", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (65, 63, 17, 5), (200, 131, 70, 33)])
@pytest.mark.parametrize("route", ["gemm", "fused"])
def test_cuda_matches_reference(compute, dtype, symmetric, k, sizes, route, rng):
    n1, n2, d, p = sizes
    check(compute, n1, n2, d, k, p, dtype, symmetric, device="cuda", gen=rng, route=route)


@pytest.mark.cuda
@pytest.mark.parametrize("compute", MODES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_cuda_gemm_route_several_blocks(compute, symmetric, rng, monkeypatch):
    monkeypatch.setenv("LPLR_GEMM_BLOCK_SAMPLES", "32")
    check(compute, 101, 77, 9, 3, 11, torch.float64, symmetric, device="cuda", gen=rng,
          route="gemm")  # fmt: skip


@pytest.mark.cuda
def test_cuda_default_blocks_large(rng):
    # n·k = 4100 rows: the default blocking cuts the symmetric square into two block rows.
    check("full", 410, 410, 64, 10, 48, torch.float32, True, device="cuda", gen=rng)
    check("trace", 2300, 2300, 16, 2, 24, torch.float32, True, device="cuda", gen=rng)


@pytest.mark.cuda
def test_cuda_noncontiguous_and_build_has_cuda(rng):
    assert lplr_fast.backend_info()["cuda"], "CUDA device present but _C built without CUDA"
    check("full", 70, 90, 6, 3, 8, torch.float64, False, device="cuda", gen=rng, noncontig=True)
