"""The kernels as torch operators (torch.ops.lplr.*): schemas and fake implementations
(opcheck), tracing under torch.compile, argument errors raised from C++, the GEMM route, the
device-generic faces, and bitwise reproducibility of the reductions."""

from __future__ import annotations

import pytest
import torch

import lplr_fast
from lplr_fast import _C
from lplr_fast.gram import gram_accumulate, gram_accumulate_reference, gram_out_shape
from lplr_fast.ntk.symmetry import symmetrize_

OPS = torch.ops.lplr
MODES = {"full": 0, "trace": 1, "diagonal": 2}


def _gram_inputs(n1, n2, d, k, p, gen, dtype=torch.float64):
    def r(*s):
        return torch.randn(*s, generator=gen, dtype=dtype)

    return r(n1, d), r(n1, k, p), r(n2, d), r(n2, k, p)


def _sym(n, gen, dtype=torch.float64):
    m = torch.randn(n, n, generator=gen, dtype=dtype)
    return m + m.T


# ---- opcheck ------------------------------------------------------------------------------


@pytest.mark.parametrize("compute", list(MODES))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("route", [0, 1, 2])
def test_opcheck_gram_accumulate(compute, symmetric, route, rng):
    a1, g1, a2, g2 = _gram_inputs(6, 5, 3, 2, 4, rng)
    n2 = 6 if symmetric else 5
    out = torch.randn(gram_out_shape(6, n2, 2, compute), generator=rng, dtype=torch.float64)
    args = (out, a1, g1, None if symmetric else a2, None if symmetric else g2, 0.5,
            MODES[compute], True, route)  # fmt: skip
    torch.library.opcheck(OPS.gram_accumulate_.default, args)


def test_opcheck_spectral_ops(rng):
    a = _sym(9, rng)
    v = torch.randn(9, generator=rng, dtype=torch.float64)
    torch.library.opcheck(OPS.tile_stats.default, (a[2:7, 1:9].contiguous(), 2, 1))
    torch.library.opcheck(OPS.square_stats.default, (a,))
    torch.library.opcheck(OPS.symv_upper.default, (a, v))
    torch.library.opcheck(OPS.symv_upper.default, (a, torch.randn(9, 3, dtype=torch.float64)))
    torch.library.opcheck(OPS.abs_quadratic.default, (a, v))


def test_compile_traces_through_the_ops(rng):
    a, g, _, _ = _gram_inputs(7, 7, 4, 3, 5, rng)
    mat = _sym(7, rng)

    def kernel_and_stats(a, g, mat):
        out = torch.zeros(7, 7, 3, 3, dtype=a.dtype)
        gram_accumulate(out, a, g, check_finite=False)
        scalars, row_abs = OPS.square_stats(mat)
        return out, scalars, row_abs, OPS.symv_upper(mat, mat[:, 0].contiguous())

    compiled = torch.compile(kernel_and_stats, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(a, g, mat), kernel_and_stats(a, g, mat), strict=True):
        assert torch.equal(got, want)


def test_opcheck_non_contiguous_vectors(rng):
    a = _sym(6, rng)
    v = torch.randn(3, 6, generator=rng, dtype=torch.float64).T  # strides (1, 6)
    torch.library.opcheck(OPS.symv_upper.default, (a, v))
    torch.library.opcheck(OPS.abs_quadratic.default, (a, a[0]))  # a row view: stride 1
    torch.library.opcheck(OPS.tile_stats.default, (a[1:5, 2:6], 1, 2))  # a strided view


def test_compile_keeps_kernel_strides(rng):
    a = _sym(5, rng)
    v = torch.randn(2, 5, generator=rng, dtype=torch.float64).T

    def flat(a, v):
        return OPS.symv_upper(a, v).T.contiguous().view(-1)

    compiled = torch.compile(flat, fullgraph=True)
    assert torch.equal(compiled(a, v), flat(a, v))


@pytest.mark.parametrize(
    "call",
    [
        lambda: OPS.square_stats(torch.empty(3, 4, device="meta", dtype=torch.float64)),
        lambda: OPS.symv_upper(
            torch.empty(3, 3, device="meta", dtype=torch.float64),
            torch.empty(4, device="meta", dtype=torch.float64),
        ),
        lambda: OPS.abs_quadratic(
            torch.empty(3, 3, device="meta", dtype=torch.float64),
            torch.empty(2, device="meta", dtype=torch.float64),
        ),
        lambda: OPS.tile_stats(torch.empty(3, 3, device="meta", dtype=torch.float64), -1, 0),
        lambda: OPS.gram_accumulate_(
            torch.empty(4, 4, device="meta", dtype=torch.float64),
            torch.empty(3, 2, device="meta", dtype=torch.float64),
            torch.empty(3, 1, 2, device="meta", dtype=torch.float64),
            None,
            None,
            1.0,
            1,
            False,
            0,
        ),
    ],
)
def test_fake_implementations_check_shapes(call):
    with pytest.raises(ValueError):
        call()


def test_fake_implementations_check_dtypes():
    half = torch.empty(3, 3, device="meta", dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.square_stats(half)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.tile_stats(half, 0, 0)


# ---- errors from C++ ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_spectral_ops_reject_other_dtypes(dtype):
    a = torch.ones(4, 4, dtype=dtype)
    with pytest.raises(TypeError, match="tile must be float32 or float64"):
        OPS.tile_stats(a, 0, 0)
    with pytest.raises(TypeError, match="a must be float32 or float64"):
        OPS.square_stats(a)
    with pytest.raises(TypeError, match="a must be float32 or float64"):
        OPS.symv_upper(a, torch.ones(4, dtype=dtype))
    with pytest.raises(TypeError, match="a must be float32 or float64"):
        OPS.abs_quadratic(a, torch.ones(4))


def test_spectral_ops_reject_bad_shapes():
    with pytest.raises(ValueError, match="tile must be 2-D"):
        OPS.tile_stats(torch.ones(4), 0, 0)
    with pytest.raises(ValueError, match="row0 and col0 must be >= 0"):
        OPS.tile_stats(torch.ones(2, 2), -1, 0)
    with pytest.raises(ValueError, match="a must be a square 2-D matrix"):
        OPS.square_stats(torch.ones(3, 4))
    with pytest.raises(ValueError, match="v has 5 rows but a is 4 x 4"):
        OPS.symv_upper(torch.ones(4, 4), torch.ones(5))
    with pytest.raises(TypeError, match="v has dtype"):
        OPS.symv_upper(torch.ones(4, 4), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="v must be a vector of length 4"):
        OPS.abs_quadratic(torch.ones(4, 4), torch.ones(4, 2))


def test_gram_route_validated(rng):
    a, g, _, _ = _gram_inputs(3, 3, 2, 1, 2, rng)
    with pytest.raises(ValueError, match="route must be one of"):
        gram_accumulate(torch.zeros(3, 3, 1, 1, dtype=torch.float64), a, g, route="blas")
    with pytest.raises(ValueError, match="route must be 0"):
        OPS.gram_accumulate_(torch.zeros(3, 3, 1, 1, dtype=torch.float64), a, g, None, None,
                             1.0, 0, True, 7)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only build's message")
def test_cuda_key_without_cuda_build_names_the_build():
    if lplr_fast.backend_info()["cuda"]:
        pytest.skip("this build has CUDA")
    # A CPU-only torch cannot allocate CUDA tensors; the registration itself is checked.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lplr::square_stats", "CUDA")


# ---- the GEMM route ---------------------------------------------------------------------


@pytest.mark.parametrize("compute", list(MODES))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", ["1", "7", "0"])  # 0: the default block size
def test_gemm_route_matches_reference(compute, symmetric, block, rng, monkeypatch):
    monkeypatch.setenv("LPLR_GEMM_BLOCK_SAMPLES", block)
    a1, g1, a2, g2 = _gram_inputs(23, 17, 5, 3, 6, rng)
    if symmetric:
        a2 = g2 = None
    n2 = 23 if symmetric else 17
    init = torch.randn(gram_out_shape(23, n2, 3, compute), generator=rng, dtype=torch.float64)
    ref = gram_accumulate_reference(init.clone(), a1, g1, a2, g2, beta=0.3, compute=compute)
    out = gram_accumulate(init.clone(), a1, g1, a2, g2, beta=0.3, compute=compute, route="gemm")
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compute", list(MODES))
@pytest.mark.parametrize("n", [1, 7, 2500])
def test_symmetrize_in_place(compute, n, rng):
    k = 3 if n < 100 else 1
    shape = gram_out_shape(n, n, k, compute)
    tile = torch.randn(shape, generator=rng, dtype=torch.float64)
    mirror = tile.permute(1, 0, 3, 2) if compute == "full" else tile.transpose(0, 1)
    want = 0.5 * (tile + mirror)
    got = symmetrize_(tile.clone(), compute, block=1000)
    assert torch.allclose(got, want, rtol=1e-15, atol=1e-15)
    assert torch.equal(got, got.permute(1, 0, 3, 2) if compute == "full" else got.transpose(0, 1))


def test_gemm_route_frozen_weight_and_no_bias(rng, monkeypatch):
    monkeypatch.setenv("LPLR_GEMM_BLOCK_SAMPLES", "3")
    _, g, _, _ = _gram_inputs(8, 8, 0, 2, 3, rng)
    a = torch.zeros(8, 0, dtype=torch.float64)
    ref = gram_accumulate_reference(torch.zeros(8, 8, 2, 2, dtype=torch.float64), a, g, beta=0.0)
    out = gram_accumulate(torch.zeros(8, 8, 2, 2, dtype=torch.float64), a, g, beta=0.0,
                          route="gemm")  # fmt: skip
    assert torch.equal(out, ref) or torch.allclose(out, ref, rtol=1e-13, atol=0)


# ---- device-generic faces = CPU kernels ---------------------------------------------------


def _poisoned(n, gen):
    m = _sym(n, gen)
    m[1, 3] = float("nan")
    m[4, 0] = float("inf")
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generic_faces_match_cpu_kernels(dtype, rng):
    a = _poisoned(70, rng).to(dtype)
    a[5, 6] += 1.0  # asymmetric
    for got, want in zip(_C.square_stats_generic(a), OPS.square_stats(a), strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
    tile = a[10:40, 20:69]
    for got, want in zip(
        _C.tile_stats_generic(tile, 10, 20), OPS.tile_stats(tile, 10, 20), strict=True
    ):
        assert torch.allclose(got, want, rtol=1e-12, atol=0)
    clean = torch.nan_to_num(a, nan=0.0, posinf=0.0)
    v = torch.randn(70, 3, generator=rng, dtype=torch.float64).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(_C.symv_upper_generic(clean, v), OPS.symv_upper(clean, v), rtol=tol)
    w = v[:, 0].contiguous()
    assert torch.allclose(_C.abs_quadratic_generic(clean, w), OPS.abs_quadratic(clean, w))


def test_square_stats_overflowing_asymmetry_is_infinite():
    a = torch.tensor([[1.0, 1.5e308], [-1.5e308, 1.0]], dtype=torch.float64)
    scalars, _ = OPS.square_stats(a)
    assert scalars[1].item() == float("inf")
    scalars, _ = _C.square_stats_generic(a)
    assert scalars[1].item() == float("inf")


def test_empty_inputs():
    scalars, rows, cols = OPS.tile_stats(torch.zeros(0, 3), 0, 0)
    assert scalars.tolist() == [0.0, 0.0, 0.0, 0.0] and rows.shape == (0,) and cols.shape == (3,)
    scalars, rows = OPS.square_stats(torch.zeros(0, 0))
    assert scalars.tolist() == [0.0] * 6 and rows.shape == (0,)
    assert OPS.symv_upper(torch.zeros(0, 0), torch.zeros(0)).shape == (0,)


# ---- bitwise reproducibility --------------------------------------------------------------


def _all_outputs(a: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    return [
        *OPS.tile_stats(a[3:, 1:], 3, 1),
        *OPS.square_stats(a),
        OPS.symv_upper(a, v),
        OPS.symv_upper(a, v[:, :1].contiguous().squeeze(1)),
        OPS.abs_quadratic(a, v[:, 0].contiguous()),
    ]


@pytest.mark.parametrize("n", [1, 63, 129, 1000])
def test_reductions_bitwise_repeatable_and_thread_count_independent(n, rng):
    a = _sym(n, rng) * 1e3
    v = torch.randn(n, 2, generator=rng, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        first = _all_outputs(a, v)
        again = _all_outputs(a, v)
        torch.set_num_threads(1)
        single = _all_outputs(a, v)
    finally:
        torch.set_num_threads(threads)
    for x, y, z in zip(first, again, single, strict=True):
        assert torch.equal(x, y) and torch.equal(x, z)


@pytest.mark.parametrize("route", ["auto", "gemm"])
def test_gram_bitwise_repeatable(route, rng):
    a, g, _, _ = _gram_inputs(150, 150, 20, 3, 30, rng)
    runs = []
    for _ in range(3):
        out = torch.zeros(150, 150, 3, 3, dtype=torch.float64)
        runs.append(gram_accumulate(out, a, g, route=route))
    assert all(torch.equal(runs[0], r) for r in runs[1:])


# ---- CUDA faces ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_spectral_ops_match_cpu(dtype, rng):
    a = _poisoned(300, rng).to(dtype)
    a[5, 6] += 1.0
    for got, want in zip(OPS.square_stats(a.cuda()), OPS.square_stats(a), strict=True):
        assert got.is_cuda
        assert torch.allclose(got.cpu(), want, rtol=1e-12, atol=0, equal_nan=True)
    tile = a[10:140, 20:269]
    for got, want in zip(
        OPS.tile_stats(tile.cuda(), 10, 20), OPS.tile_stats(tile, 10, 20), strict=True
    ):
        assert torch.allclose(got.cpu(), want, rtol=1e-12, atol=0)
    clean = torch.nan_to_num(a, nan=0.0, posinf=0.0)
    v = torch.randn(300, 2, generator=rng, dtype=torch.float64).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    got = OPS.symv_upper(clean.cuda(), v.cuda()).cpu()
    assert torch.allclose(got, OPS.symv_upper(clean, v), rtol=tol, atol=tol)
    w = v[:, 0].contiguous()
    got = OPS.abs_quadratic(clean.cuda(), w.cuda()).cpu()
    assert torch.allclose(got, OPS.abs_quadratic(clean, w), rtol=1e-12)


@pytest.mark.cuda
def test_cuda_ops_refuse_mixed_devices_and_bad_dtypes(rng):
    a = _sym(8, rng)
    with pytest.raises(ValueError, match="one device"):
        OPS.symv_upper(a.cuda(), torch.ones(8, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.square_stats(a.cuda().half())
    out = torch.zeros(8, 8, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="one device"):
        gram_accumulate(out, a.cuda(), a.cuda()[:, None, :])


@pytest.mark.cuda
def test_cuda_opcheck(rng):
    a1, g1, a2, g2 = (t.cuda() for t in _gram_inputs(6, 5, 3, 2, 4, rng))
    out = torch.randn(6, 5, 2, 2, dtype=torch.float64, device="cuda")
    for route in (1, 2):
        args = (out, a1, g1, a2, g2, 0.5, 0, True, route)
        torch.library.opcheck(OPS.gram_accumulate_.default, args)
    a = _sym(9, rng).cuda()
    torch.library.opcheck(OPS.square_stats.default, (a,))
    torch.library.opcheck(OPS.symv_upper.default, (a, a[:, 0].contiguous()))


# ---- misuse: autograd, aliasing, index overflow --------------------------------------------


def test_ops_refuse_inputs_that_require_grad(rng):
    a = _sym(5, rng).requires_grad_()
    v = torch.randn(5, generator=rng, dtype=torch.float64)
    for call in (
        lambda: OPS.symv_upper(a, v),
        lambda: OPS.square_stats(a),
        lambda: OPS.abs_quadratic(a, v),
        lambda: OPS.tile_stats(a, 0, 0),
    ):
        with pytest.raises(RuntimeError, match=r"no derivative.*detach"):
            call()
    with torch.no_grad():  # allowed: nothing is recorded
        OPS.square_stats(a)
    x, g, _, _ = _gram_inputs(4, 4, 3, 1, 2, rng)
    leaf = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="out requires grad"):
        OPS.gram_accumulate_(leaf, x, g, None, None, 1.0, 1, False, 0)
    with pytest.raises(RuntimeError, match="a1 requires grad"):
        gram_accumulate(torch.zeros(4, 4, dtype=torch.float64), x.requires_grad_(), g,
                        compute="trace")  # fmt: skip


def test_spectral_wrappers_accept_matrices_that_require_grad(rng):
    from lplr_fast.spectrum import native

    a = _sym(6, rng)
    stats = native.square_stats(a.clone().requires_grad_())
    assert stats.fro_sq == native.square_stats(a).fro_sq


@pytest.mark.parametrize("n", [64, 700])  # one chunk and several chunks of the CPU kernel
@pytest.mark.parametrize("route", ["auto", "gemm"])
def test_gram_refuses_out_aliasing_an_input(n, route, rng):
    out = torch.randn(n, n, generator=rng, dtype=torch.float64)
    g = torch.randn(n, 1, 2, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"out shares memory with a1.*clone"):
        gram_accumulate(out, out, g, compute="trace", route=route)
    with pytest.raises(ValueError, match="out shares memory with a1"):
        gram_accumulate(out, out[:, :3], g, compute="trace", route=route)
    a2 = torch.randn(n, n, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="out shares memory with a2"):
        gram_accumulate(out, a2, g, out, g, compute="trace", route=route)
    buffer = torch.zeros(n * n + n * 3, dtype=torch.float64)  # one storage, disjoint parts
    out_part, a_part = buffer[: n * n].view(n, n), buffer[n * n :].view(n, 3)
    a_part.copy_(torch.randn(n, 3, generator=rng, dtype=torch.float64))
    gram_accumulate(out_part, a_part, g, compute="trace", route=route)
    want = gram_accumulate_reference(torch.zeros(n, n, dtype=torch.float64), a_part, g,
                                     compute="trace")  # fmt: skip
    torch.testing.assert_close(out_part, want, rtol=1e-12, atol=1e-12)


def test_tile_stats_refuses_index_overflow():
    with pytest.raises(ValueError, match="must fit in int64"):
        OPS.tile_stats(torch.zeros(3, 3, dtype=torch.float64), 2**63 - 2, 0)


def test_gram_refuses_aliasing_through_separate_storages(rng):
    numpy = pytest.importorskip("numpy")
    n = 300
    buffer = numpy.random.default_rng(0).standard_normal(n * n + n * 3)
    out = torch.from_numpy(buffer)[: n * n].view(n, n)
    a = torch.from_numpy(buffer)[: n * 3].view(n, 3)  # a second storage over out's memory
    g = torch.randn(n, 1, 2, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="out shares memory with a1"):
        gram_accumulate(out, a, g, compute="trace")
