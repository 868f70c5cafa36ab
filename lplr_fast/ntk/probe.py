"""Random-probe self-check of a computed NTK: uᵀ Θ v must equal (J₁ᵀu) · (J₂ᵀv).

The left side is accumulated from the kernel's tiles as they stream past (a consumer of the
tile stream, no host synchronisation); the right side comes from plain backward passes of
Σ u_ic f_c(x1_i) and Σ v_jc f_c(x2_j) over the model itself (no hooks, no rules), so the two
sides share nothing but the model. A dropped parameter, a sample assigned to the wrong row,
a lost cotangent or a wrong rule changes the left side and not the right.

Every sample is probed (u, v Gaussian over all samples):

* ``full``: u (n1, k), v (n2, k); with x2 = None, v = u (uᵀΘu = ‖J₁ᵀu‖², Θ and its errors
  are symmetric, so the quadratic form sees them). Cost: one forward and one backward pass
  over the data per side.
* ``trace`` / ``diagonal``: these kernels hold only the c = c' blocks, so the right side is
  Σ_c (J_cᵀu_c)·(J_cᵀv_c): one backward per output, batched over chunks of outputs
  (``is_grads_batched``) — about the cost of the engine's own cotangent passes (k backward
  passes over every sample, plus the weight gradients), per side.
* ``coverage="sampled"`` (``verify="sampled"``, an explicit opt-in): in trace / diagonal mode
  u and v live on a stratified random subset (one sample per 64, at least 4), k backward
  passes over n/64 samples; a wrong kernel confined to unprobed samples passes unseen.

Tolerance (a detector, not a certificate). Each side is a sum of terms computed in floating
point; the two sides agree up to

    tol = C·ε·S + λ·(G+1)·(ε/2)·√Q + γ(h_K)·Y + γ(h_A)·A

with ε the working precision (of the model), u₆₄ = 2⁻⁵³ and γ(h) = h·u₆₄ / (1 − h·u₆₄):

* C·ε·S, C = 2¹⁰: the rounding of the inputs of the probe, inherent to each side — the
  kernel entries (Gram contractions over feature lengths d) and the gradients J₁ᵀu, J₂ᵀv
  (backward passes summing over samples and widths). Both are O(ε·√length) relative to
  S = max(‖a‖‖b‖, √Q), a = J₁ᵀu, b = J₂ᵀv, Q = Σ u²Θ²v² (for Gaussian u, E‖a‖² = tr Θ₁₁,
  the natural size of the entries' errors; √Q covers kernels dominated by one direction,
  where ‖a‖ can be small by chance). Observed in float32 (2026-11-28, CPU, tanh MLPs
  64→w→w→10): |difference| ≤ 0.37·ε·S at w = 2048 (4.3M parameters, n = 96, all modes),
  w = 4096 (trace, n = 64) and w = 6144 (38M parameters, full, n = 32).
* λ·(G+1)·(ε/2)·√Q, λ = 8: the kernel side forms the products Θ·v and partial sums of at most
  G terms in the working precision (G = ``GROUP`` over the contracted samples, or k over the
  outputs in "full" mode); treating the roundings as independent and bounded (Higham & Mary,
  SIAM J. Sci. Comput. 41 (2019) A2815), their total is below this with probability
  ≥ 1 − 2·exp(−λ²/2).
* γ(h_K)·Y: everything after that is summed in float64 by :func:`fsum`, a tree of sums of at
  most ``FOLD`` terms, so no addition chain is longer than h_K (:func:`fold_chain` of the
  sizes summed); Y = Σ|y| over the float64 terms y (accumulated alongside). Rigorous.
* γ(h_A)·A, A = ‖a‖‖b‖ ≥ Σ_p |a_p b_p|: the autograd side's dot products, float64 products
  (exact for float32 gradients) summed by :func:`fsum` with chains ≤ h_A. Rigorous.

So the probe's own arithmetic adds nothing at float32 scale (the review's false alarm: 4.3M
squares summed in float32 lost 5.6e-4) and a relative ~1e-13 at most in float64; relative
errors above ~1.2e-4 (float32) or ~2.3e-13 (float64) of S are flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .capture import batched_vjp, cotangent_budget_bytes, model_output
from .validation import StateGuard, forward_context

SAFETY = 2.0**10  # C
LAMBDA = 8.0  # λ of the probabilistic bound on the working-precision partial sums
GROUP = 32  # G: terms per working-precision partial sum over the contracted samples
FOLD = 32  # terms per float64 partial sum in fsum
STRATUM = 64  # samples per probed sample with coverage="sampled"
_CHUNK_ELEMS = 1 << 24  # tile entries per chunk of the kernel-side sums
_DOT_CHUNK = 1 << 22  # gradient entries per float64 product temporary


class ProbeMismatchError(RuntimeError):
    """The computed kernel failed its random-probe check against plain autograd."""


@dataclass(frozen=True)
class ProbeReport:
    """Outcome of one check: ``kernel_value`` = uᵀΘv from the tiles, ``autograd_value`` =
    (J₁ᵀu)·(J₂ᵀv), ``tolerance`` as in the module docstring, ``scale`` = S, ``samples``
    probed per side (all of x1 unless ``coverage="sampled"``)."""

    kernel_value: float
    autograd_value: float
    tolerance: float
    scale: float
    samples: int

    @property
    def passed(self) -> bool:
        return abs(self.kernel_value - self.autograd_value) <= self.tolerance


def fold_chain(m: int) -> int:
    """Most additions on any path of :func:`fsum`'s tree over m terms."""
    levels, size = 1, max(1, m)
    while size > FOLD:
        size = -(-size // FOLD)
        levels += 1
    return levels * (FOLD - 1)


def fsum(x: torch.Tensor) -> torch.Tensor:
    """Σ x (float64, any shape) as a tree of sums of at most ``FOLD`` terms, whatever order
    torch reduces each of them in: every term takes part in at most ``fold_chain(x.numel())``
    additions (Higham, *Accuracy and Stability*, §4.2: error ≤ γ(chain)·Σ|x|)."""
    x = x.reshape(-1)
    while x.numel() > FOLD:
        m = x.numel() // FOLD
        head = x[: m * FOLD].view(m, FOLD).sum(dim=1)
        x = head if m * FOLD == x.numel() else torch.cat([head, x[m * FOLD :].sum().view(1)])
    return x.sum()


def _gamma(chain: int) -> float:
    unit = 2.0**-53
    return chain * unit / (1 - chain * unit)


def _strata(n: int, gen: torch.Generator) -> torch.Tensor:
    """One random sample from each stratum of ``STRATUM`` consecutive samples (at least 4)."""
    count = min(n, max(4, math.ceil(n / STRATUM)))
    edges = torch.linspace(0, n, count + 1).floor().long()
    offsets = torch.rand(count, generator=gen, dtype=torch.float64)
    widths = (edges[1:] - edges[:-1]).double()
    return torch.unique(edges[:-1] + (offsets * widths).floor().long().clamp(min=0))


class _Sums:
    """Float64 partial sums kept on the device (one per chunk), folded at the end."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.longest = 1  # most terms in one part
        self.merged_chain: int | None = None  # set by :meth:`merged`

    def add(self, terms: torch.Tensor, weight: float = 1.0) -> None:
        self.parts.append(fsum(terms) * weight)  # weight 1 or 2: exact
        self.longest = max(self.longest, terms.numel())

    def total(self, device: torch.device) -> torch.Tensor:
        if not self.parts:
            return torch.zeros((), dtype=torch.float64, device=device)
        return fsum(torch.stack(self.parts))

    @property
    def chain(self) -> int:
        if self.merged_chain is not None:
            return self.merged_chain
        return fold_chain(self.longest) + fold_chain(len(self.parts)) + 1

    def merged(self, total: torch.Tensor, processes: int) -> None:
        """The parts replaced by ``total``: their total summed over ``processes`` (e.g. an
        all-reduce, which adds at most processes − 1 additions to any term's chain)."""
        self.merged_chain = self.chain + max(0, processes - 1)
        self.parts = [total.reshape(())]


class ProbeCheck:
    """Consumer of the tile stream (``update``) plus the autograd side (``finish``).

    ``block_size``: samples per forward on the autograd side (the engine's block, offset:
    :func:`_block_starts`);
    ``per_sample``: one sample per forward instead (models whose backward pass couples the
    samples of a batch, where the NTK is that of each sample's own gradient)."""

    def __init__(
        self,
        model: nn.Module,
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        *,
        compute: str,
        k: int,
        bn_eval: bool,
        guard: StateGuard | None,
        block_size: int,
        seed: int = 20261127,
        coverage: str = "all",
        per_sample: bool = False,
    ) -> None:
        if coverage not in ("all", "sampled"):
            raise ValueError(f"coverage must be 'all' or 'sampled', got {coverage!r}")
        self.model, self.x1, self.x2, self.compute, self.k = model, x1, x2, compute, k
        self.bn_eval, self.guard = bn_eval, guard
        self.block = 1 if per_sample else max(1, block_size)
        self.symmetric = x2 is None
        gen = torch.Generator().manual_seed(seed)
        self.dtype = next(p for p in model.parameters() if p.requires_grad).dtype
        device = x1.device
        n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
        shape = () if compute == "trace" else (k,)
        self.rows1: torch.Tensor | None = None
        self.rows2: torch.Tensor | None = None
        if compute == "full" or coverage == "all":
            u = torch.randn(n1, *shape, generator=gen, dtype=torch.float64)
            v = u if self.symmetric else torch.randn(n2, *shape, generator=gen, dtype=torch.float64)
        else:
            self.rows1 = _strata(n1, gen)
            self.rows2 = self.rows1 if self.symmetric else _strata(n2, gen)
            u = torch.zeros(n1, *shape, dtype=torch.float64)
            u[self.rows1] = torch.randn(len(self.rows1), *shape, generator=gen, dtype=torch.float64)
            v = u
            if not self.symmetric:
                v = torch.zeros(n2, *shape, dtype=torch.float64)
                v[self.rows2] = torch.randn(
                    len(self.rows2), *shape, generator=gen, dtype=torch.float64
                )
        # The probe vectors are the working-precision values; their float64 copies are exact.
        self.u = u.to(dtype=self.dtype, device=device)
        self.v = self.u if v is u else v.to(dtype=self.dtype, device=device)
        self.u64 = self.u.to(torch.float64)
        self.value, self.absolute, self.square = _Sums(), _Sums(), _Sums()
        self.group_terms = min(k, GROUP) if compute == "full" else GROUP

    # -- kernel side: a consumer of the tile stream ----------------------------------------
    def update(self, rows: slice, cols: slice, tile: torch.Tensor, layer: str | None = None):
        if layer is not None:
            return
        # With x2 = None, v = u: the mirrored tile Θ(cols, rows) = tileᵀ adds the same again.
        weight = 2.0 if self.symmetric and rows != cols else 1.0
        left64, right = self.u64[rows], self.v[cols]
        step = max(1, _CHUNK_ELEMS // max(1, tile[0].numel()))
        for s in range(0, tile.shape[0], step):
            y, z = _terms(self.compute, tile[s : s + step], left64[s : s + step], right)
            self.value.add(y, weight)
            self.absolute.add(y.abs(), weight)
            self.square.add(z, weight)

    # -- autograd side ---------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for p in self.model.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def _pull(self, x: torch.Tensor, w: torch.Tensor, outputs: tuple[int, int] | None):
        """J(x)ᵀw per parameter, forward by forward over blocks of samples: for "full"
        (``outputs`` None) one tensor of the parameter's shape; otherwise, for the outputs c
        in [c0, c1), J_c(x)ᵀw_c stacked, (c1 − c0, *shape), one batched backward per block."""
        params = self._params()
        if x.shape[0] == 0:
            span = () if outputs is None else (outputs[1] - outputs[0],)
            return [p.new_zeros(*span, *p.shape) for p in params]
        total: list[torch.Tensor] | None = None
        starts = _block_starts(x.shape[0], self.block)
        for s, e in zip(starts, [*starts[1:], x.shape[0]], strict=True):
            xb, wb = x[s:e], w[s:e]
            with forward_context(self.model, self.bn_eval, self.guard):
                flat = model_output(self.model, xb)
                if outputs is None:
                    grads = torch.autograd.grad(flat, params, wb, allow_unused=True)
                    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(
                        params, grads, strict=True)]  # fmt: skip
                else:
                    grads = batched_vjp([flat], params, [_output_seeds(flat, wb, *outputs)])
            if total is None:
                total = list(grads)
            else:
                for acc, g in zip(total, grads, strict=True):
                    acc += g
        assert total is not None
        return total

    def _probed(self, x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor | None):
        if rows is None:
            return x, w
        index = rows.to(x.device)
        return x[index], w[index.to(w.device)]

    def _output_chunk(self) -> int:
        """Outputs per batched backward in trace / diagonal mode (cotangent budget)."""
        width = sum(p.numel() * p.element_size() for p in self._params())
        return max(1, min(self.k, cotangent_budget_bytes(self.x1.device) // (4 * width)))

    def _autograd_sums(self) -> tuple[_Sums, _Sums, _Sums]:
        """Σ a·b, ‖a‖², ‖b‖² (float64) with a = J₁ᵀu, b = J₂ᵀv (per output, then summed, in
        trace / diagonal mode), in chunks of outputs sized by the cotangent budget."""
        x1, u = self._probed(self.x1, self.u, self.rows1)
        xs2 = self.x1 if self.x2 is None else self.x2
        x2, v = (x1, u) if self.symmetric else self._probed(xs2, self.v, self.rows2)
        dot, norm_a, norm_b = _Sums(), _Sums(), _Sums()
        if self.compute == "full":
            spans: list[tuple[int, int] | None] = [None]
        else:
            chunk = self._output_chunk()
            spans = [(c0, min(self.k, c0 + chunk)) for c0 in range(0, self.k, chunk)]
        for span in spans:
            a = self._pull(x1, u, span)
            if self.symmetric:
                _dot_parts(dot, a, a)
                continue
            b = self._pull(x2, v, span)
            _dot_parts(dot, a, b)
            _dot_parts(norm_a, a, a)
            _dot_parts(norm_b, b, b)
        if self.symmetric:
            norm_a = norm_b = dot
        return dot, norm_a, norm_b

    def finish(self) -> ProbeReport:
        """Compare both sides (one host synchronisation); raises :class:`ProbeMismatchError`."""
        dot, norm_a, norm_b = self._autograd_sums()
        device = self.x1.device
        totals = torch.stack([
            self.value.total(device), self.absolute.total(device), self.square.total(device),
            dot.total(device), norm_a.total(device), norm_b.total(device),
        ]).tolist()  # fmt: skip
        kernel, absolute, square, autograd, aa, bb = totals
        product = math.sqrt(max(aa, 0.0) * max(bb, 0.0))  # A = ‖a‖‖b‖
        root_q = math.sqrt(max(square, 0.0))
        scale = max(product, root_q)
        eps = torch.finfo(self.dtype).eps
        tolerance = (
            SAFETY * eps * scale
            + LAMBDA * (self.group_terms + 1) * (eps / 2) * root_q
            + _gamma(self.value.chain) * absolute
            + _gamma(max(dot.chain, norm_a.chain, norm_b.chain)) * product
        )
        samples = self.x1.shape[0] if self.rows1 is None else len(self.rows1)
        report = ProbeReport(kernel, autograd, tolerance, scale, samples)
        if not report.passed:  # also NaN / Inf
            raise ProbeMismatchError(_message(report, self.compute))
        return report


def _block_starts(n: int, block: int) -> list[int]:
    """Starts of the autograd side's blocks of at most ``block`` samples: a first block of
    half that, then full ones, so that (for n > 1) no block is one of the engine's, which
    start at multiples of the block size. A backward pass that couples the samples of a
    block, unseen by the routing check, then gives the two sides different sums."""
    if block <= 1:
        return list(range(n))
    half = max(1, min(block, n) // 2)
    return [0, *range(half, n, block)]


def _output_seeds(flat: torch.Tensor, w: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """grad_outputs for outputs c in [c0, c1): seeds[c − c0, i, c] = w_ic (w (m,) in trace
    mode: the same weight for every output)."""
    m, k = flat.shape
    wc = w[:, None].expand(m, k) if w.dim() == 1 else w
    seeds = flat.new_zeros(c1 - c0, m, k)
    idx = torch.arange(c1 - c0, device=flat.device)
    seeds[idx, :, idx + c0] = wc[:, c0:c1].T
    return seeds


def _dot_parts(sums: _Sums, a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Σ over parameters of ⟨a_p, b_p⟩ into ``sums``: float64 products, chunk by chunk."""
    for ai, bi in zip(a, b, strict=True):
        af, bf = ai.reshape(-1), bi.reshape(-1)
        for s in range(0, af.numel(), _DOT_CHUNK):
            pa, pb = af[s : s + _DOT_CHUNK].double(), bf[s : s + _DOT_CHUNK].double()
            sums.add(pa * pa if ai is bi else pa * pb)


def _group_sums(temp: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and 2-norms of consecutive groups of at most ``GROUP`` entries along ``dim``
    (working precision; ``dim`` becomes the group axis)."""
    length = temp.shape[dim]
    if length <= GROUP:
        return temp.sum(dim, keepdim=True), torch.linalg.vector_norm(temp, dim=dim, keepdim=True)
    full = length // GROUP
    head = temp.narrow(dim, 0, full * GROUP).unflatten(dim, (full, GROUP))
    sums = [head.sum(dim + 1)]
    norms = [torch.linalg.vector_norm(head, dim=dim + 1)]
    if full * GROUP < length:
        tail = temp.narrow(dim, full * GROUP, length - full * GROUP)
        sums.append(tail.sum(dim, keepdim=True))
        norms.append(torch.linalg.vector_norm(tail, dim=dim, keepdim=True))
    return torch.cat(sums, dim), torch.cat(norms, dim)


def _terms(
    compute: str, tile: torch.Tensor, left64: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 terms y (Σ y = leftᵀ·tile·right) and z (Σ z = (left∘left)ᵀ(tile∘tile)(right∘right))
    of one block of rows: the products tile·right and their sums over groups of at most G
    contracted entries in the working precision (one temporary of the block's size, as a
    matrix-vector product would read it), the rest in float64."""
    if compute == "full":  # tile (r, j, a, b), left (r, a), right (j, b): groups over b
        sums, norms = _group_sums(tile * right[None, :, None, :], 3)
        lhs = left64[:, None, :, None]
    elif compute == "trace":  # tile (r, j), left (r,), right (j,): groups over j
        sums, norms = _group_sums(tile * right, 1)
        lhs = left64[:, None]
    else:  # diagonal: tile (r, j, a), left (r, a), right (j, a): groups over j
        sums, norms = _group_sums(tile * right, 1)
        lhs = left64[:, None, :]
    y = sums.to(torch.float64) * lhs
    z = norms.to(torch.float64).square() * (lhs * lhs)
    return y, z


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
        "module's forward, or a path taken only by some samples, which the routing check on "
        "the first samples did not see; a module whose samples are not on the axis it seems; "
        "a custom forward, hook or backward that changes or mixes a module's inputs, outputs "
        "or gradients). Exact alternatives: on_mismatch='fallback' (recompute with the "
        "reference and warn), or implementation='jacobian' / 'ntk_vp'. Please report the model."
    )


__all__ = ["ProbeCheck", "ProbeMismatchError", "ProbeReport", "fold_chain", "fsum"]
