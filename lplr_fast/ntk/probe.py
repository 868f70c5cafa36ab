"""Random-probe self-check of a computed NTK: uᵀ Θ v must equal (J₁ᵀu) · (J₂ᵀv).

The left side is accumulated from the kernel's tiles as they stream past (a consumer of the
tile stream, no host synchronisation); the right side comes from plain backward passes of
Σ u_ic f_c(x1_i) and Σ v_jc f_c(x2_j) over the model itself (no hooks, no rules), so the two
sides share nothing but the model. A dropped parameter, a sample assigned to the wrong row,
a lost cotangent or a wrong rule changes the left side and not the right.

* ``full``: u (n1, k), v (n2, k) Gaussian over all entries; with x2 = None, v = u
  (uᵀΘu = ‖J₁ᵀu‖², one backward pass for the whole check: Θ and its errors are symmetric,
  so the quadratic form sees them). Cost: one forward and one backward pass per side.
* ``trace`` / ``diagonal``: these kernels hold only the c = c' blocks, so the right side
  needs one backward per output: Σ_c (J_cᵀu_c)·(J_cᵀv_c). To keep that cheap, u and v live
  on a stratified random subset of samples (one per 64, at least 4, so every tile of
  64+ samples is hit); cost ≈ k backward passes over n/64 samples per side.

Tolerance (a detector, not a certificate): the rounding error of the kernel entries is of
order ε·|J_i|·|J_j| and that of the dot product ε·‖a‖‖b‖, so both sides agree to
C·ε·S with S = max(‖a‖‖b‖, ((u∘u)ᵀ(Θ∘Θ)(v∘v))^½), a = J₁ᵀu, b = J₂ᵀv (for Gaussian u, v,
E‖a‖² = tr Θ₁₁, the natural size of the entries' errors; the second term covers kernels
dominated by one direction, where ‖a‖ can be small by chance). C = 2¹⁰ leaves a wide margin
over the observed rounding (≤ 2⁵ε·S on the test models, float32 and float64) and still
flags anything above 1.2e-4 (float32) or 2.3e-13 (float64) relative to S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .capture import batched_vjp, cotangent_budget_bytes, model_output
from .validation import BufferGuard, forward_context

SAFETY = 2.0**10
STRATUM = 64  # samples per probed sample in the trace / diagonal modes


class ProbeMismatchError(RuntimeError):
    """The computed kernel failed its random-probe check against plain autograd."""


@dataclass(frozen=True)
class ProbeReport:
    """Outcome of one check: ``kernel_value`` = uᵀΘv from the tiles, ``autograd_value`` =
    (J₁ᵀu)·(J₂ᵀv), ``tolerance`` as in the module docstring, ``samples`` probed per side."""

    kernel_value: float
    autograd_value: float
    tolerance: float
    scale: float
    samples: int

    @property
    def passed(self) -> bool:
        return abs(self.kernel_value - self.autograd_value) <= self.tolerance


def _strata(n: int, gen: torch.Generator) -> torch.Tensor:
    """One random sample from each stratum of ``STRATUM`` consecutive samples (at least 4)."""
    count = min(n, max(4, math.ceil(n / STRATUM)))
    edges = torch.linspace(0, n, count + 1).floor().long()
    offsets = torch.rand(count, generator=gen, dtype=torch.float64)
    widths = (edges[1:] - edges[:-1]).double()
    return torch.unique(edges[:-1] + (offsets * widths).floor().long().clamp(min=0))


class ProbeCheck:
    """Consumer of the tile stream (``update``) plus the autograd side (``finish``)."""

    def __init__(
        self,
        model: nn.Module,
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        *,
        compute: str,
        k: int,
        bn_eval: bool,
        guard: BufferGuard | None,
        block_size: int,
        seed: int = 20261127,
    ) -> None:
        self.model, self.x1, self.x2, self.compute, self.k = model, x1, x2, compute, k
        self.bn_eval, self.guard, self.block = bn_eval, guard, max(1, block_size)
        self.symmetric = x2 is None
        gen = torch.Generator().manual_seed(seed)
        dtype = next(p for p in model.parameters() if p.requires_grad).dtype
        device = x1.device
        n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
        if compute == "full":
            self.rows1, self.rows2 = None, None
            u = torch.randn(n1, k, generator=gen, dtype=torch.float64)
            v = u if self.symmetric else torch.randn(n2, k, generator=gen, dtype=torch.float64)
        else:
            self.rows1 = _strata(n1, gen)
            self.rows2 = self.rows1 if self.symmetric else _strata(n2, gen)
            shape = (k,) if compute == "diagonal" else ()
            u = torch.zeros(n1, *shape, dtype=torch.float64)
            u[self.rows1] = torch.randn(len(self.rows1), *shape, generator=gen, dtype=torch.float64)
            if self.symmetric:
                v = u
            else:
                v = torch.zeros(n2, *shape, dtype=torch.float64)
                v[self.rows2] = torch.randn(
                    len(self.rows2), *shape, generator=gen, dtype=torch.float64
                )
        self.u = u.to(dtype=dtype, device=device)
        self.v = self.u if v is u else v.to(dtype=dtype, device=device)
        self.value = torch.zeros((), dtype=dtype, device=device)
        self.square = torch.zeros((), dtype=dtype, device=device)

    # -- kernel side: a consumer of the tile stream ----------------------------------------
    def update(self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None):
        if layer is not None:
            return
        self._add(self.u[rows], tile, self.v[cols])
        if self.symmetric and rows != cols:  # the mirrored tile Θ(cols, rows) = tileᵀ
            self._add(self.v[rows], tile, self.u[cols])

    def _add(self, left: torch.Tensor, tile: torch.Tensor, right: torch.Tensor) -> None:
        """leftᵀ·tile·right and (left∘left)ᵀ·(tile∘tile)·(right∘right), a few rows of the
        tile at a time: no tile-sized temporary, no permuted copy of the tile."""
        step = max(1, _CHUNK_ELEMS // max(1, tile[0].numel()))
        right_sq = right * right
        for s in range(0, tile.shape[0], step):
            t, lhs = tile[s : s + step], left[s : s + step]
            self.value += _bilinear(self.compute, lhs, t, right)
            self.square += _bilinear(self.compute, lhs * lhs, t * t, right_sq)

    # -- autograd side ---------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for p in self.model.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def _pull_full(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        """J(x)ᵀw (w: (n, k)), one parameter-shaped tensor per parameter, block by block."""
        params = self._params()
        total = [torch.zeros_like(p) for p in params]
        for s in range(0, x.shape[0], self.block):
            with forward_context(self.model, self.bn_eval, self.guard):
                flat = model_output(self.model, x[s : s + self.block])
                grads = torch.autograd.grad(flat, params, w[s : s + self.block], allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    acc += g
        return total

    def _per_output_graph(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """f(x[rows]) flattened to (m, k), graph kept for several pulls."""
        return model_output(self.model, x[rows.to(x.device)])

    def _pull_outputs(
        self, flat: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, c0: int, c1: int
    ) -> list[torch.Tensor]:
        """For c in [c0, c1): J_cᵀ w_c over the probed rows, per parameter (c1 − c0, *shape)."""
        wr = w[rows.to(w.device)]
        m, k = flat.shape
        wr = wr if wr.dim() == 2 else wr[:, None].expand(m, k)
        seeds = torch.zeros(c1 - c0, m, k, dtype=flat.dtype, device=flat.device)
        idx = torch.arange(c1 - c0, device=flat.device)
        seeds[idx, :, idx + c0] = wr[:, c0:c1].T
        return batched_vjp([flat], self._params(), [seeds])

    def _per_output_sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Σ_c a_c·b_c, ‖a‖², ‖b‖² with a_c = J_c(x1)ᵀu_c, b_c = J_c(x2)ᵀv_c, in chunks of
        outputs sized by the cotangent budget."""
        assert self.rows1 is not None and self.rows2 is not None
        xs2 = self.x1 if self.x2 is None else self.x2
        params = self._params()
        width = sum(p.numel() * p.element_size() for p in params)
        chunk = max(1, min(self.k, cotangent_budget_bytes(self.x1.device) // (2 * width)))
        dot = norm_a = norm_b = torch.zeros((), dtype=self.value.dtype, device=self.x1.device)
        with forward_context(self.model, self.bn_eval, self.guard):
            flat1 = self._per_output_graph(self.x1, self.rows1)
            flat2 = flat1 if self.symmetric else self._per_output_graph(xs2, self.rows2)
            for c0 in range(0, self.k, chunk):
                c1 = min(self.k, c0 + chunk)
                a = self._pull_outputs(flat1, self.rows1, self.u, c0, c1)
                if self.symmetric:
                    dot = dot + _dot(a, a)
                    continue
                b = self._pull_outputs(flat2, self.rows2, self.v, c0, c1)
                dot, norm_a, norm_b = dot + _dot(a, b), norm_a + _dot(a, a), norm_b + _dot(b, b)
        if self.symmetric:
            norm_a = norm_b = dot
        return dot, norm_a, norm_b, len(self.rows1)

    def finish(self) -> ProbeReport:
        """Compare both sides (one host synchronisation); raises :class:`ProbeMismatchError`."""
        if self.compute == "full":
            a = self._pull_full(self.x1, self.u)
            if self.symmetric:
                dot = norm_a = norm_b = _dot(a, a)
            else:
                b = self._pull_full(self.x2, self.v)  # type: ignore[arg-type]
                dot, norm_a, norm_b = _dot(a, b), _dot(a, a), _dot(b, b)
            samples = self.x1.shape[0]
        else:
            dot, norm_a, norm_b, samples = self._per_output_sums()
        scale = torch.maximum(torch.sqrt(norm_a * norm_b), torch.sqrt(self.square))
        eps = torch.finfo(self.value.dtype).eps
        kernel_value, autograd_value, scale_value = torch.stack(
            [self.value, torch.as_tensor(dot, dtype=self.value.dtype), scale]
        ).tolist()
        report = ProbeReport(
            kernel_value, autograd_value, SAFETY * eps * scale_value, scale_value, samples
        )
        if not report.passed:  # also NaN / Inf
            raise ProbeMismatchError(_message(report, self.compute))
        return report


_CHUNK_ELEMS = 1 << 24  # tile entries per chunk of the kernel-side sums


def _bilinear(compute: str, left: torch.Tensor, tile: torch.Tensor, right: torch.Tensor):
    """leftᵀ Θ right for one block of rows, in the layout of ``compute``: batched small
    matrix-vector products over the contiguous trailing axes, then one small dot."""
    if compute == "full":  # tile (r, j, a, b), left (r, a), right (j, b)
        inner = torch.matmul(tile, right.unsqueeze(-1)).squeeze(-1)  # (r, j, a)
        return torch.einsum("rja,ra->", inner, left)
    if compute == "trace":  # tile (r, j), left (r,), right (j,)
        return left @ (tile @ right)
    inner = (tile * right).sum(dim=1)  # diagonal: tile (r, j, a), right (j, a) -> (r, a)
    return (inner * left).sum()


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Σ over parameters of ⟨a_p, b_p⟩ (fused reductions, no product temporaries)."""
    return torch.stack(
        [torch.dot(ai.reshape(-1), bi.reshape(-1)) for ai, bi in zip(a, b, strict=True)]
    ).sum()


def _message(report: ProbeReport, compute: str) -> str:
    values = (report.kernel_value, report.autograd_value, report.scale)
    if not all(math.isfinite(v) for v in values):
        return (
            f"NTK self-check failed (compute={compute!r}): the kernel or the model's gradients "
            f"contain NaN or Inf (uᵀΘv = {report.kernel_value}, (J₁ᵀu)·(J₂ᵀv) = "
            f"{report.autograd_value}): the model overflows or divides by zero at these "
            "inputs; no NTK was returned."
        )
    rel = abs(report.kernel_value - report.autograd_value) / max(report.scale, 1e-300)
    return (
        f"NTK self-check failed (compute={compute!r}): for random probes u, v the kernel "
        f"gives uᵀΘv = {report.kernel_value:.17g} but plain autograd on the model gives "
        f"(J₁ᵀu)·(J₂ᵀv) = {report.autograd_value:.17g} (difference "
        f"{abs(report.kernel_value - report.autograd_value):.3g}, tolerance "
        f"{report.tolerance:.3g}, ~{rel:.2g} of the kernel's scale). The structured rules do "
        "not describe this model correctly (likely causes: a parameter used outside its "
        "module's forward, a module whose samples are not on the axis it seems, a custom "
        "forward or hook that changes a module's inputs or outputs). Exact alternatives: "
        "on_mismatch='fallback' (recompute with the reference and warn), or "
        "implementation='jacobian' / 'ntk_vp'. Please report the model."
    )


__all__ = ["ProbeCheck", "ProbeMismatchError", "ProbeReport"]
