"""The fused per-layer NTK Gram accumulation, ``K += (A₁A₂ᵀ + β) ⊙ (G₁G₂ᵀ)``.

For a Linear layer with inputs ``a_i ∈ R^{d_in}`` and output cotangents
``g_{i,c} = ∂f_c(x_i)/∂z_i ∈ R^{d_out}`` the layer's NTK block is
``Θ[(i,c),(j,c')] = (a_i·a_j + β)(g_{i,c}·g_{j,c'})`` with β = 1 for a bias, 0 without.

Three faces compute it: :func:`gram_accumulate_reference` (readable PyTorch), the C++ CPU
kernel and the CUDA path (both behind the torch operator ``torch.ops.lplr.gram_accumulate_``
of ``lplr_fast._C``). :func:`gram_accumulate` calls the operator when the compiled module
supports the tensors' device.
"""

from __future__ import annotations

from typing import Literal

import torch

from . import _backend

Compute = Literal["full", "trace", "diagonal"]
Route = Literal["auto", "gemm", "fused"]
COMPUTE_MODES: dict[str, int] = {"full": 0, "trace": 1, "diagonal": 2}
ROUTES: dict[str, int] = {"auto": 0, "gemm": 1, "fused": 2}


def gram_out_shape(n1: int, n2: int, k: int, compute: Compute) -> tuple[int, ...]:
    """Shape of the accumulated kernel: (n1, n2, k, k) | (n1, n2) | (n1, n2, k)."""
    return {"full": (n1, n2, k, k), "trace": (n1, n2), "diagonal": (n1, n2, k)}[compute]


def _mode(compute: str) -> int:
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute must be one of {sorted(COMPUTE_MODES)}, got {compute!r}")
    return COMPUTE_MODES[compute]


def gram_accumulate_reference(
    out: torch.Tensor,
    a1: torch.Tensor,
    g1: torch.Tensor,
    a2: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    compute: Compute = "full",
) -> torch.Tensor:
    """Readable PyTorch face of :func:`gram_accumulate` (same arguments, same result)."""
    _mode(compute)
    if (a2 is None) != (g2 is None):
        raise ValueError("a2 and g2 must both be given (cross kernel) or both be None")
    if a2 is None:
        a2, g2 = a1, g1
    assert g2 is not None
    weight = a1 @ a2.T + beta  # (n1, n2)
    if compute == "full":
        out += weight[:, :, None, None] * torch.einsum("icp,jdp->ijcd", g1, g2)
    elif compute == "trace":
        out += weight * (g1.reshape(g1.shape[0], -1) @ g2.reshape(g2.shape[0], -1).T)
    else:
        out += weight[:, :, None] * torch.einsum("icp,jcp->ijc", g1, g2)
    return out


def gram_accumulate(
    out: torch.Tensor,
    a1: torch.Tensor,
    g1: torch.Tensor,
    a2: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    compute: Compute = "full",
    check_finite: bool = True,
    route: Route = "auto",
) -> torch.Tensor:
    """Accumulate one layer's NTK Gram into ``out`` in place and return it.

    Args:
        out: float32/float64 accumulator, contiguous; shape (n1, n2, k, k) for
            ``compute="full"``, (n1, n2) for ``"trace"`` (summed over outputs c = c'),
            (n1, n2, k) for ``"diagonal"`` (output c with output c).
        a1: layer inputs of the row samples, (n1, d_in).
        g1: output cotangents of the row samples, (n1, k, d_out).
        a2, g2: the same for the column samples, (n2, d_in) and (n2, k, d_out); both None
            means the symmetric case (rows = columns), computed on the upper triangle only.
        beta: added to every activation inner product (1.0 for a layer with bias).
        compute: output layout, as above.
        check_finite: reject NaN/Inf inputs (one extra pass over them; on a GPU one host
            synchronisation).
        route: "auto" (default), "gemm" (BLAS/cuBLAS GEMMs for both Grams, then one
            elementwise Hadamard-accumulate pass; symmetric inputs compute the upper block
            triangle only) or "fused" (the device's fused kernel). All routes give the same
            values up to rounding; on CPU "auto" is the fused kernel, on CUDA the GEMM route.
            GEMMs follow torch's TF32 setting (``torch.backends.cuda.matmul.allow_tf32``,
            off by default): the default is true float32/float64 arithmetic.

    Raises:
        ValueError / TypeError naming the argument on bad shapes, dtypes, devices or values.
    """
    mode = _mode(compute)
    if route not in ROUTES:
        raise ValueError(f"route must be one of {sorted(ROUTES)}, got {route!r}")
    if _backend.supports(out.device):
        torch.ops.lplr.gram_accumulate_(
            out, a1, g1, a2, g2, float(beta), mode, check_finite, ROUTES[route]
        )
        return out
    if out.device.type == "cuda" and _backend.native() is not None:
        raise ValueError(
            f"tensors are on {out.device} but lplr_fast._C was built without CUDA; rebuild "
            "with a CUDA-enabled torch (see README, GPU install)"
        )
    return gram_accumulate_reference(out, a1, g1, a2, g2, beta=beta, compute=compute)
