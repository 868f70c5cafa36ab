"""The NTK engine and the eigenvalue brackets on a GPU against the float64 CPU reference
(skipped without a CUDA device): every model family, all compute modes, cross kernels,
float32 and float64, several tiles, host destinations filled through pinned buffers, and a
tile loop without host synchronisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lplr_fast
from lplr_fast import empirical_ntk, ntk_blocks

from .test_ntk_correctness import CASES, inputs, rel

pytestmark = pytest.mark.cuda
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _on(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if x is None:
        return None
    return (x.to(dtype) if x.is_floating_point() else x).cuda()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("compute", ["full", "trace", "diagonal"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gpu_kernel_matches_cpu_float64(case, compute, cross, dtype, rng):
    builder, kind = CASES[case]
    model = builder(10).eval()
    x1 = inputs(kind, 9, rng)
    x2 = inputs(kind, 6, rng) if cross else None
    ref = empirical_ntk(model, x1, x2, compute=compute, implementation="jacobian")
    gpu_model = builder(10).eval().to(device="cuda", dtype=dtype)
    gpu_model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})  # fmt: skip
    got = empirical_ntk(gpu_model, _on(x1, dtype), _on(x2, dtype), compute=compute, block_size=4)
    assert got.is_cuda and got.dtype == dtype
    assert rel(got.double().cpu(), ref) <= TOL[dtype]


@pytest.mark.parametrize("dest", ["memmap", "cpu tensor"])
@pytest.mark.parametrize("compute", ["full", "trace"])
def test_gpu_tiles_stream_into_host_destinations(dest, compute, rng, tmp_path):
    builder, kind = CASES["mlp_tanh"]
    model = builder(3).double().cuda()
    x = inputs(kind, 23, rng).cuda()
    want = empirical_ntk(model, x, compute=compute).cpu()
    if dest == "memmap":
        out = np.lib.format.open_memmap(tmp_path / "k.npy", "w+", np.float64, tuple(want.shape))
        out[...] = np.nan  # every entry must be written
    else:
        out = torch.full(tuple(want.shape), float("nan"), dtype=torch.float64)
    got = empirical_ntk(model, x, compute=compute, block_size=5, out=out)
    assert got is out
    values = torch.from_numpy(np.asarray(out)) if dest == "memmap" else out
    assert not values.isnan().any()
    assert rel(values, want) <= 1e-12


def test_gpu_tile_loop_has_no_host_synchronisation(rng):
    builder, kind = CASES["mlp_tanh"]
    model = builder(10).cuda()
    x = inputs(kind, 40, rng).float().cuda()
    model = model.float()
    tiles = ntk_blocks(model, x, block_size=8)
    first = next(tiles)  # routing check and first block: syncs allowed up front
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = [next(tiles) for _ in range(14)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert next(tiles, None) is None  # the probe check: one sync after the last tile
    assert len(rest) + 1 == 15 and first[1].is_cuda


@pytest.mark.parametrize("n", [7, 150])
def test_gpu_certified_brackets_hold(n, rng):
    m = torch.randn(n, n, generator=rng, dtype=torch.float64)
    a = m @ m.T + 1e-3 * torch.eye(n, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(a)
    b = lplr_fast.eig_bounds(a.cuda())
    assert b.lambda_min_lower <= exact[0].item() <= b.lambda_min_upper
    assert b.lambda_max_lower <= exact[-1].item() <= b.lambda_max_upper


def test_gpu_streaming_bounds_and_operator(rng):
    builder, kind = CASES["mlp_tanh"]
    model = builder(3).double().cuda()
    x = inputs(kind, 12, rng).cuda()
    kernel, stream = empirical_ntk(model, x, bounds=True, block_size=5)
    mat = kernel.permute(0, 2, 1, 3).reshape(36, 36).cpu()
    ev = torch.linalg.eigvalsh(mat)
    sb = stream.bounds()
    assert sb.lambda_max_lower <= ev[-1].item() <= sb.lambda_max_upper
    op = lplr_fast.NTKOperator(model, x)
    lz = lplr_fast.eig_bounds(op, method="lanczos")
    assert abs(lz.lambda_max_lower - ev[-1].item()) <= 1e-6 * ev[-1].item()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_recurrent_eval_mode(cell, rng):
    """cuDNN's RNN backward refuses eval mode: the engine switches cuDNN off around its
    forwards; the kernel equals the float64 CPU reference."""

    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
            self.rnn = rnn(3, 5, batch_first=True)
            self.head = torch.nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = Seq().double().eval()
    x = torch.randn(6, 4, 3, generator=rng, dtype=torch.float64)
    ref = empirical_ntk(model, x, implementation="jacobian")
    got = empirical_ntk(model.cuda(), x.cuda())
    assert torch.backends.cudnn.enabled  # restored
    assert rel(got.cpu(), ref) <= 1e-12
