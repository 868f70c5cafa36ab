"""Invariants of the structured NTK: symmetry, PSD, layer parts, tiling, streaming, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lplr_fast import empirical_ntk, ntk_blocks
from lplr_fast.ntk import transpose_tile

from .models import SharedLayer, SmallCNN, TinyResNet, mlp, randomise_batchnorm, seeded


def as_matrix(kernel: torch.Tensor) -> torch.Tensor:
    n1, n2, k, _ = kernel.shape
    return kernel.permute(0, 2, 1, 3).reshape(n1 * k, n2 * k)


@pytest.mark.parametrize("builder", [mlp, SmallCNN, SharedLayer])
def test_symmetric_and_psd(builder, rng):
    model = seeded(builder)
    shape = (9, 2, 7, 7) if builder is SmallCNN else (9, 6)
    x = torch.randn(*shape, generator=rng, dtype=torch.float64)
    mat = as_matrix(empirical_ntk(model, x, block_size=4))
    assert torch.equal(mat, mat.T)
    eig = torch.linalg.eigvalsh(mat)
    assert eig.min() >= -1e-12 * eig.max()


@pytest.mark.parametrize("compute", ["full", "trace", "diagonal"])
def test_layer_parts_sum_to_total(compute, rng):
    model = seeded(TinyResNet)
    randomise_batchnorm(model, rng)
    x = torch.randn(6, 2, 7, 7, generator=rng, dtype=torch.float64)
    total, parts = empirical_ntk(model, x, compute=compute, return_layers=True, block_size=4)
    assert set(parts) == {
        "stem",
        "block.conv1",
        "block.bn1",
        "block.conv2",
        "block.bn2",
        "norm",
        "fc",
    }
    assert torch.allclose(sum(parts.values()), total, rtol=1e-13, atol=0)
    _, ref_parts = empirical_ntk(
        model, x, compute=compute, return_layers=True, implementation="jacobian"
    )
    for name, part in parts.items():
        assert ((part - ref_parts[name]).norm() / ref_parts[name].norm()).item() <= 1e-10


@pytest.mark.parametrize("cross", [False, True])
def test_block_size_does_not_change_result(cross, rng):
    model = seeded(SmallCNN)
    x1 = torch.randn(11, 2, 7, 7, generator=rng, dtype=torch.float64)
    x2 = torch.randn(6, 2, 7, 7, generator=rng, dtype=torch.float64) if cross else None
    whole = empirical_ntk(model, x1, x2, block_size=64)
    default = empirical_ntk(model, x1, x2)
    for bs in (1, 2, 5):
        tiled = empirical_ntk(model, x1, x2, block_size=bs)
        assert torch.allclose(tiled, whole, rtol=1e-12, atol=1e-14)
    assert torch.allclose(default, whole, rtol=1e-12, atol=1e-14)


def test_ntk_blocks_upper_triangle_reassembles(rng):
    model = seeded(mlp)
    x = torch.randn(10, 6, generator=rng, dtype=torch.float64)
    full = empirical_ntk(model, x)
    seen = torch.zeros(10, 10, dtype=torch.bool)
    for (r, c), tile in ntk_blocks(model, x, block_size=4):
        assert c.start >= r.start
        assert torch.allclose(tile, full[r, c], rtol=1e-13, atol=0)
        assert torch.allclose(transpose_tile(tile, "full"), full[c, r], rtol=1e-13, atol=0)
        seen[r, c] = True
        seen[c, r] = True
    assert seen.all()


def test_out_memmap(tmp_path, rng):
    model = seeded(mlp)
    x = torch.randn(9, 6, generator=rng, dtype=torch.float64)
    mm = np.lib.format.open_memmap(tmp_path / "k.npy", mode="w+", dtype=np.float64, shape=(9, 9))
    got = empirical_ntk(model, x, compute="trace", out=mm, block_size=4)
    assert got is mm
    mm.flush()
    ref = empirical_ntk(model, x, compute="trace")
    assert np.allclose(np.load(tmp_path / "k.npy"), ref.numpy(), rtol=1e-13, atol=0)


def test_out_tensor_wrong_shape(rng):
    model = seeded(mlp)
    x = torch.randn(5, 6, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="out has shape"):
        empirical_ntk(model, x, compute="trace", out=torch.empty(4, 4, dtype=torch.float64))


def _state(model: nn.Module):
    return (
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: b.detach().clone() for n, b in model.named_buffers()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    )


def _same(s1, s2) -> bool:
    params1, bufs1, *rest1 = s1
    params2, bufs2, *rest2 = s2
    return (
        all(torch.equal(params1[k], params2[k]) for k in params1)
        and all(torch.equal(bufs1[k], bufs2[k]) for k in bufs1)
        and rest1 == rest2
    )


@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_batchnorm_modes_leave_model_untouched(batchnorm, rng):
    model = seeded(TinyResNet)
    randomise_batchnorm(model, rng)
    model.train()
    x = torch.randn(6, 2, 7, 7, generator=rng, dtype=torch.float64)
    before = _state(model)
    got = empirical_ntk(model, x, batchnorm=batchnorm)
    assert _same(before, _state(model))
    if batchnorm == "eval":
        ref = empirical_ntk(model.eval(), x, implementation="jacobian")
        assert ((got - ref).norm() / ref.norm()).item() <= 1e-10
    else:  # batch statistics: exactness is checked against autograd in the next test
        mat = as_matrix(got)
        assert torch.allclose(mat, mat.T, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(got, empirical_ntk(model, x, batchnorm="eval"))


def test_batch_coupled_kernel_matches_manual_jacobian(rng):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, generator=rng, dtype=torch.float64)
    got = empirical_ntk(model, x, batchnorm="batch")
    # manual: J of the flattened whole-batch output via autograd, BN with batch stats
    params = [p for p in model.parameters()]
    work = nn.Sequential(*model)  # same modules
    rows = []
    for i in range(5):
        for c in range(2):
            bn = work[1]
            out = work[3](
                torch.tanh(
                    torch.nn.functional.batch_norm(
                        work[0](x), None, None, bn.weight, bn.bias, training=True, eps=bn.eps
                    )
                )
            )
            grads = torch.autograd.grad(out[i, c], params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    ref = (jac @ jac.T).reshape(5, 2, 5, 2).permute(0, 2, 1, 3)
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-10


def test_state_restored_after_error_midway(rng):
    model = seeded(SharedLayer)
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    before = _state(model)

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = model.out.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        empirical_ntk(model, x)
    handle.remove()
    assert _same(before, _state(model))
