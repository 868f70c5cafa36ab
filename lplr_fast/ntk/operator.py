"""The NTK as a matrix-free operator: v ↦ Θ v = J (Jᵀ v), one VJP and one JVP per product.

For kernels too large to store ((n·k)² entries), ``eig_bounds(NTKOperator(...),
method="lanczos")`` brackets λ_max and gives a Ritz upper bound on λ_min, with memory of a few
parameter-sized vectors.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.func import jvp, vjp

from .engine import _prepare, empirical_ntk
from .reference import functional
from .validation import batchnorms_in_eval, cudnn_rnn_guard, train_mode_batchnorms


class NTKOperator:
    """Θ(x, x) of ``model`` as an (n·k) × (n·k) symmetric PSD operator, sample-major (row
    i·k + c is output c of sample i, as in :func:`lplr_fast.spectrum.as_matrix`).

    Args:
        model: as for :func:`empirical_ntk` (never modified).
        x: (n, ...) inputs.
        dtype: compute in this dtype (float32/float64; default: the parameters' dtype).
        batchnorm: "error" or "eval" (the batch-coupled kernel has no cheap product).
        chunk_size: samples per VJP/JVP call (bounds activation memory; default all).

    Attributes:
        shape: (n·k, n·k); ``psd`` is True (Θ = J Jᵀ); ``matvecs`` counts products so far.
    """

    psd = True

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        dtype: torch.dtype | None = None,
        batchnorm: Literal["error", "eval"] = "error",
        chunk_size: int | None = None,
    ) -> None:
        if batchnorm not in ("error", "eval"):
            raise ValueError(f"NTKOperator supports batchnorm='error' or 'eval', got {batchnorm!r}")
        job = _prepare(model, x, None, "full", "ntk_vp", dtype, batchnorm)
        model, x = job.model, job.x1
        if train_mode_batchnorms(model) and batchnorm != "eval":
            raise ValueError("BatchNorm in train mode: pass batchnorm='eval'")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        self.model, self.x, self.batchnorm = model, x, batchnorm
        self.chunk = chunk_size or x.shape[0]
        self.params, self.f_batch, _ = functional(model)
        ref = next(iter(self.params.values()))
        self.dtype, self.device = ref.dtype, ref.device
        with batchnorms_in_eval(model, batchnorm == "eval"):
            k = self.f_batch(self.params, x[:1]).shape[1]
        self.n, self.k = x.shape[0], k
        self.shape = (self.n * k, self.n * k)
        self.matvecs = 0

    def _chunks(self):
        for s in range(0, self.n, self.chunk):
            yield slice(s, min(self.n, s + self.chunk))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Θ v for v of shape (n·k,); returns (n·k,) in the operator's dtype and device."""
        if v.shape != (self.shape[0],):
            raise ValueError(f"v must have shape ({self.shape[0]},), got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("v contains NaN or Inf")
        cot = v.to(dtype=self.dtype, device=self.device).reshape(self.n, self.k)
        with batchnorms_in_eval(self.model, self.batchnorm == "eval"), cudnn_rnn_guard(self.model):
            pulled: dict[str, torch.Tensor] | None = None
            for rows in self._chunks():
                xb = self.x[rows]
                _, pullback = vjp(lambda th, xb=xb: self.f_batch(th, xb), self.params)
                part = pullback(cot[rows])[0]
                if pulled is None:
                    pulled = part
                else:
                    pulled = {name: pulled[name] + part[name] for name in pulled}
            assert pulled is not None
            out = []
            for rows in self._chunks():
                xb = self.x[rows]
                out.append(
                    jvp(lambda th, xb=xb: self.f_batch(th, xb), (self.params,), (pulled,))[1]
                )
        self.matvecs += 1
        return torch.cat(out).reshape(-1)

    __matmul__ = matvec

    def diagonal(self, block_size: int = 64) -> torch.Tensor:
        """Θ[(i,c),(i,c)] for every sample i and output c, shape (n·k,): the squared norms of
        the per-output parameter gradients (structured kernel of blocks, diagonals kept)."""
        diags = []
        for s in range(0, self.n, block_size):
            xb = self.x[s : s + block_size]
            block = empirical_ntk(
                self.model, xb, compute="diagonal", batchnorm=self.batchnorm, block_size=block_size
            )
            diags.append(block.diagonal(dim1=0, dim2=1).T)  # (b, k)
        return torch.cat(diags).reshape(-1)

    def to_dense(self) -> torch.Tensor:
        """The stored (n·k) × (n·k) matrix (small cases and checks)."""
        full = empirical_ntk(self.model, self.x, batchnorm=self.batchnorm)
        return full.permute(0, 2, 1, 3).reshape(self.shape)
