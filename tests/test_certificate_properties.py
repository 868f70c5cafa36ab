"""Property-based checks: a certified bracket never excludes the exact value.

Two families of inputs, both with exactly known truths:
* small matrices (n ≤ 6, sometimes 8), random structure and scale 2^-1074 … 2^1000: the
  truth comes from exact rational arithmetic on the float entries (tests/exact.py);
* matrices up to n = 300 built exactly as Q·diag(d)·Qᵀ with Q a product of two dyadic
  Householder reflectors (v with 2^p entries ±1, so vᵀv = 2^p and every entry is a dyadic
  rational computed without rounding): the eigenvalues are the integers d, scaled by an
  exact power of two.

``LPLR_PROPERTY_SCALE`` multiplies the number of examples (default 1: about 14 000 bounds
computed and checked, half a minute on 2 cores). Hypothesis runs derandomized (the same
cases in every CI run); ``LPLR_PROPERTY_RANDOM=1`` explores new ones.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lplr_fast import StreamingBounds, eig_bounds, ntk_distance
from lplr_fast.spectrum.rounding import scale_tensor

from .exact import ExactSpectrum, frobenius_sq
from .faults import Injected, fail_at_call, stream_results

pytestmark = pytest.mark.filterwarnings("ignore::lplr_fast.spectrum.WidenedInputWarning")

F64 = torch.float64
SCALE = float(os.environ.get("LPLR_PROPERTY_SCALE", "1"))
RANDOM = os.environ.get("LPLR_PROPERTY_RANDOM", "0") == "1"  # explore new cases


def cases(n: int) -> settings:
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def contains(lo: float, hi: float, truth: Fraction) -> bool:
    return (
        lo <= hi
        and (lo == -math.inf or Fraction(lo) <= truth)
        and (hi == math.inf or truth <= Fraction(hi))
    )


# -- small matrices with exact spectra ---------------------------------------------------
KINDS = (
    "general", "dominant", "gram", "singular", "clustered", "graded", "indefinite",
    "asymmetric", "diagonal", "zero_rows",
)  # fmt: skip


@dataclass(frozen=True)
class SmallSpec:
    n: int
    kind: str
    scale: int
    dtype: str
    seed: int


small_specs = st.builds(
    SmallSpec,
    n=st.integers(1, 6),
    kind=st.sampled_from(KINDS),
    scale=st.integers(-1074, 1000),
    dtype=st.sampled_from(["float64"] * 6 + ["float32", "float32", "float16", "bfloat16"]),
    seed=st.integers(0, 2**31),
)


def _dyadic(g: torch.Generator, shape: tuple[int, ...], spread: int) -> torch.Tensor:
    m = torch.randint(-(2**20), 2**20 + 1, shape, generator=g).to(F64)
    e = torch.randint(-spread, spread + 1, shape, generator=g)
    return torch.ldexp(m, e.to(F64))


def _symmetric(g: torch.Generator, n: int, spread: int = 24) -> torch.Tensor:
    a = torch.triu(_dyadic(g, (n, n), spread))
    return a + torch.triu(a, 1).T


def _dominant(a: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Set the diagonal to at least the off-diagonal row sums (exactly, rounding up)."""
    a = a.clone()
    for i in range(a.shape[0]):
        row = sum((Fraction(abs(float(x))) for j, x in enumerate(a[i]) if j != i), Fraction(0))
        extra = Fraction(abs(float(_dyadic(g, (1,), 10)[0])))
        d = float(row + extra)
        a[i, i] = d if Fraction(d) >= row else math.nextafter(d, math.inf)
    return a


def build_small(spec: SmallSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed)
    n, kind = spec.n, spec.kind
    if kind in ("gram", "singular"):
        rank = int(torch.randint(1, n + 1, (1,), generator=g)) if kind == "gram" else n // 2
        j = torch.randint(-(2**12), 2**12 + 1, (n, rank), generator=g).to(F64)
        a = j @ j.T  # exact integers
    else:
        a = _symmetric(g, n)
        if kind == "dominant":
            a = _dominant(a, g)
        elif kind == "clustered":
            a = 2.0**30 * torch.eye(n, dtype=F64) + a * 2.0**-40  # rounds: fine, a is given
        elif kind == "graded":
            grade = int(torch.randint(1, max(2, min(40, 600 // (2 * n))), (1,), generator=g))
            idx = torch.arange(n, dtype=F64)
            a = torch.ldexp(a, grade * (idx[:, None] + idx[None, :]))
        elif kind == "indefinite":
            a.diagonal().sub_(float(a.abs().max()) * 2)
            a[0, 0] = -a[0, 0]
        elif kind == "asymmetric" and n > 1:
            a[0, n - 1] = math.nextafter(float(a[0, n - 1]), math.inf)
        elif kind == "diagonal":
            a = torch.diag(a.diagonal())
        elif kind == "zero_rows":
            keep = torch.rand(n, generator=g) < 0.5
            a = a * keep[:, None] * keep[None, :]
    top = float(a.abs().max())
    if spec.dtype != "float64":
        return _in_dtype(a, top, spec)
    k = spec.scale
    if top:
        k = min(k, 1012 - math.frexp(top)[1] - n.bit_length())  # λ stays in range
    return scale_tensor(a, k)


# the largest entry lands in [2^lo, 2^hi]: below the dtype's overflow, down to where most
# entries round to subnormals or zero
DTYPE_TOPS = {"float32": (-160, 125), "bfloat16": (-160, 125), "float16": (-28, 14)}


def _in_dtype(a: torch.Tensor, top: float, spec: SmallSpec) -> torch.Tensor:
    """``a`` scaled by a power of two within the range of spec.dtype, then rounded to it."""
    dtype = getattr(torch, spec.dtype)
    if not top:
        return a.to(dtype)
    lo, hi = DTYPE_TOPS[spec.dtype]
    k = lo + (spec.scale + 1074) % (hi - lo + 1) - math.frexp(top)[1]
    return scale_tensor(a, k).to(dtype)


def _rigorous_ends(b, exact: ExactSpectrum) -> None:
    """λ_min ≤ λ_min_upper and λ_max ≥ λ_max_lower (Rayleigh quotients on stored matrices)."""
    below, at, _ = exact.counts(b.lambda_min_upper)
    assert below + at >= 1, b
    _, at, above = exact.counts(b.lambda_max_lower)
    assert above + at >= 1, b


@cases(1500)
@given(spec=small_specs, which=st.sampled_from([("min", "max"), ("min",), ("max",)]))
def test_eig_bounds_small(spec, which):
    a = build_small(spec)
    exact = ExactSpectrum(a.double())
    for method in ("dense", "cholesky", "auto"):
        b = eig_bounds(a, method=method, which=which, seed=spec.seed % 5)
        assert b.certified_min == ("min" in which) and b.certified_max == ("max" in which)
        if "min" in which:
            assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), (method, b)
        if "max" in which:
            assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), (method, b)
    b = eig_bounds(a, method="lanczos", seed=spec.seed % 5)
    assert not b.certified_min and not b.certified_max
    _rigorous_ends(b, exact)
    if bool(a.any()):  # the zero matrix is always answered exactly (and certified)
        assert not eig_bounds(a, certify=False).certified_min


# -- tilings ------------------------------------------------------------------------------
def _intervals(cuts: list[int], n: int) -> list[tuple[int, int]]:
    points = [0, *sorted(set(cuts)), n]
    return list(itertools.pairwise(points))


@st.composite
def rectangles(draw, rows: tuple[int, int], cols: tuple[int, int], depth: int = 2):
    """A guillotine partition of rows × cols."""
    (r0, r1), (c0, c1) = rows, cols
    if depth == 0 or not draw(st.booleans()):
        return [(rows, cols)]
    if draw(st.booleans()) and r1 - r0 > 1:
        m = draw(st.integers(r0 + 1, r1 - 1))
        return draw(rectangles((r0, m), cols, depth - 1)) + draw(
            rectangles((m, r1), cols, depth - 1)
        )
    if c1 - c0 > 1:
        m = draw(st.integers(c0 + 1, c1 - 1))
        return draw(rectangles(rows, (c0, m), depth - 1)) + draw(
            rectangles(rows, (m, c1), depth - 1)
        )
    return [(rows, cols)]


@st.composite
def tilings(draw, n: int, upper: bool):
    """Tiles (in sample units) covering an n×n kernel exactly once, in a random order."""
    if upper:
        cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4)) if n > 1 else []
        blocks = _intervals(cuts, n)
        tiles = []
        for i, rows in enumerate(blocks):
            tiles.append((rows, rows))
            for cols in blocks[i + 1 :]:
                tiles += draw(rectangles(rows, cols, 1))
    else:
        tiles = draw(rectangles((0, n), (0, n), 3))
    return draw(st.permutations(tiles))


def _block(a: torch.Tensor, rows, cols, k: int) -> torch.Tensor:
    """The (r, c, k, k) NTK block (k > 1) or the 2-D block (k = 1) of a sample-major matrix."""
    t = a[rows[0] * k : rows[1] * k, cols[0] * k : cols[1] * k]
    if k == 1:
        return t
    r, c = rows[1] - rows[0], cols[1] - cols[0]
    return t.reshape(r, k, c, k).permute(0, 2, 1, 3)


def feed_tiles(stream, a, tiles, k, layer=None) -> None:
    for rows, cols in tiles:
        stream.update(slice(*rows), slice(*cols), _block(a, rows, cols, k), layer=layer)


def _with_skew(a: torch.Tensor, rel: int, seed: int) -> torch.Tensor:
    """``a`` plus an antisymmetric dyadic matrix (20-bit mantissas, so its squares round in
    float32) of size about 2^rel · max|a|, rounded to a's dtype."""
    top = float(a.abs().max())
    if not top:
        return a
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.triu(_dyadic(g, (a.shape[0], a.shape[0]), 4), 1)
    w = w - w.T
    w_top = float(w.abs().max())
    if not w_top:
        return a
    w = scale_tensor(w, math.frexp(top)[1] + rel - math.frexp(w_top)[1])
    return (a.double() + w).to(a.dtype)


def _skew_sq(m: torch.Tensor) -> Fraction:
    """‖M − Mᵀ‖_F² exactly."""
    rows = m.tolist()
    n = len(rows)
    return sum(
        ((Fraction(rows[i][j]) - Fraction(rows[j][i])) ** 2 for i in range(n) for j in range(n)),
        Fraction(0),
    )


@cases(1200)
@given(
    spec=small_specs,
    upper=st.booleans(),
    skew=st.sampled_from([None, None, -30, -10, 0]),
    data=st.data(),
)
def test_streaming_bounds_small(spec, upper, skew, data):
    """Tiles fed in the spec's dtype (float64, float32, float16, bfloat16), with or without
    an antisymmetric part; the truth is that of the matrix the tiles assemble."""
    k = 2 if spec.n % 2 == 0 and data.draw(st.booleans()) else 1
    a = build_small(spec)
    if skew is not None:
        a = _with_skew(a, skew, spec.seed)
    samples = spec.n // k
    tiles = data.draw(tilings(samples, upper))
    wide = a.double()
    m = _assembled_upper(wide, tiles, k) if upper else wide
    exact = ExactSpectrum(m)
    psd = exact.counts(0.0)[0] == 0 and data.draw(st.booleans())
    stream = StreamingBounds(samples, upper=upper, psd=psd)
    feed_tiles(stream, a, tiles, k)
    b = stream.bounds()
    assert b.certified_min and b.certified_max
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), (b, tiles)
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), (b, tiles)
    g_lo, g_hi = stream.gershgorin()
    assert exact.counts(g_lo)[0] == 0 and exact.counts(g_hi)[2] == 0
    f_lo, f_hi = stream.frobenius_bounds()
    f2 = frobenius_sq(m)
    assert Fraction(f_lo) ** 2 <= f2 <= Fraction(f_hi) ** 2
    if upper:
        skew_sq = _skew_sq(m)
        assert skew_sq <= Fraction(stream.skew_frobenius_upper()) ** 2
        assert Fraction(stream.sym_frobenius_lower()) ** 2 <= f2 - skew_sq / 4  # ‖sym M‖_F²
    t_lo, t_hi = stream.trace_bounds()
    assert contains(t_lo, t_hi, sum((Fraction(float(x)) for x in wide.diagonal()), Fraction(0)))


def _assembled_upper(a: torch.Tensor, tiles, k: int) -> torch.Tensor:
    """The matrix upper-mode tiles assemble: given blocks plus mirrors of those above."""
    m = torch.zeros_like(a)
    for rows, cols in tiles:
        rs, cs = slice(rows[0] * k, rows[1] * k), slice(cols[0] * k, cols[1] * k)
        m[rs, cs] = a[rs, cs]
        if rows != cols:
            m[cs, rs] = a[rs, cs].T
    return m


def _part_scale(p: torch.Tensor, scale: int, dtype: str) -> torch.Tensor:
    """A part scaled by 2^scale (float64) or into the range of ``dtype`` and rounded to it."""
    if dtype == "float64":
        return scale_tensor(p, scale)
    return _in_dtype(p, float(p.abs().max()), SmallSpec(p.shape[0], "", scale, dtype, 0))


@cases(400)
@given(
    n=st.integers(1, 6),
    parts=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    scale=st.integers(-1000, 900),
    upper=st.booleans(),
    dtype=st.sampled_from(["float64", "float64", "float32", "float16", "bfloat16"]),
    cancel=st.sampled_from([None, None, 600, 1000]),
    data=st.data(),
)
def test_streaming_per_layer(n, parts, seed, scale, upper, dtype, cancel, data):
    """Parts in any dtype; ``cancel``: two more (float64) parts ±2^cancel at (0, n − 1) that
    cancel in the total, so the residual's rounding term dwarfs its off-diagonal tiles."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(parts):
        spread = int(torch.randint(0, 30, (1,), generator=g))
        p = _part_scale(_dominant(_symmetric(g, n, 10), g), scale + i * spread, dtype)
        layers.append(p)  # diagonally dominant, so PSD unless rounding to dtype broke it
        assume(ExactSpectrum(p.double()).counts(0.0)[0] == 0)
    if cancel is not None and dtype == "float64" and n > 1:
        for sign in (1.0, -1.0):  # c·(e₀ ± eₙ₋₁)(e₀ ± eₙ₋₁)ᵀ: exactly PSD, rank one
            v = torch.zeros(n, dtype=F64)
            v[0], v[-1] = 1.0, sign
            layers.append(torch.outer(v, v) * 2.0**cancel)
    total = layers[0].clone()
    for p in layers[1:]:
        total = total + p  # rounded (in dtype): the additivity bound must account for it
    exact = ExactSpectrum(total.double())
    psd = exact.counts(0.0)[0] == 0 and data.draw(st.booleans())
    tiles = data.draw(tilings(n, upper))
    stream = StreamingBounds(n, upper=upper, psd=psd, per_layer=True)
    for rows, cols in tiles:
        r, c = slice(*rows), slice(*cols)
        stream.update(r, c, total[r, c])
        for i, p in enumerate(layers):
            stream.update(r, c, p[r, c], layer=f"l{i}")
    if psd:
        add = stream.layer_additivity_lower()
        assert exact.counts(add)[0] == 0, add
    b = stream.bounds()
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper)
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper)


BAD_FEEDS = ("injected", "injected", "injected", "nonfinite", "shape", "overlap", "misplaced",
             "outputs")  # fmt: skip


def _bad_feed(stream, feeds, i, bad, data) -> bool:
    """Try a rejected variant of feeds[i]; True when the real tile was recorded instead (an
    injected failure that came after the update's last step)."""
    rows, cols, m, layer = feeds[i]
    r, c = slice(*rows), slice(*cols)
    tile = m[r, c]
    earlier = [f for f in feeds[:i] if f[3] == layer]
    if bad == "injected":
        with fail_at_call(data.draw(st.integers(0, 15), label="call")):
            try:
                stream.update(r, c, tile, layer=layer)
                return True
            except Injected:
                return False
    with pytest.raises((ValueError, TypeError)):
        if bad == "overlap" and earlier:
            stream.update(slice(*earlier[-1][0]), slice(*earlier[-1][1]), tile, layer=layer)
        elif bad == "misplaced" and stream.upper and stream.n > 1:
            stream.update(slice(1, 2), slice(0, 1), m[1:2, 0:1], layer=layer)
        elif bad == "outputs" and i > 0:
            stream.update(r, c, torch.zeros(*tile.shape, 2, 2, dtype=tile.dtype), layer=layer)
        elif bad == "shape":
            stream.update(r, c, torch.cat([tile, tile[:1]]), layer=layer)
        else:
            broken = tile.clone()
            broken[-1, -1] = math.nan
            stream.update(r, c, broken, layer=layer)
    return False


@cases(200)
@given(
    spec=small_specs,
    upper=st.booleans(),
    psd=st.booleans(),
    per_layer=st.booleans(),
    bad=st.sampled_from(BAD_FEEDS),
    data=st.data(),
)
def test_rejected_updates_leave_no_trace(spec, upper, psd, per_layer, bad, data):
    """An update that raises (bad input, or a failure injected into any internal step) leaves
    the stream bitwise as if it had not been tried."""
    a = build_small(spec)
    parts = ((a.double() * 0.75).to(a.dtype), (a.double() * 0.25).to(a.dtype))
    feeds = []
    for rows, cols in data.draw(tilings(spec.n, upper)):
        feeds.append((rows, cols, a, None))
        if per_layer:
            feeds += [(rows, cols, p, f"l{j}") for j, p in enumerate(parts)]
    failing = data.draw(st.integers(0, len(feeds) - 1), label="failing feed")
    clean = StreamingBounds(spec.n, upper=upper, psd=psd, per_layer=per_layer, record=True)
    tried = StreamingBounds(spec.n, upper=upper, psd=psd, per_layer=per_layer, record=True)
    for i, (rows, cols, m, layer) in enumerate(feeds):
        r, c = slice(*rows), slice(*cols)
        clean.update(r, c, m[r, c], layer=layer)
        if i == failing and _bad_feed(tried, feeds, i, bad, data):
            continue
        tried.update(r, c, m[r, c], layer=layer)
    assert stream_results(tried) == stream_results(clean)
    merged_tried = StreamingBounds.merged([tried.export()])  # no record of the rejected try
    merged_clean = StreamingBounds.merged([clean.export()])
    assert stream_results(merged_tried) == stream_results(merged_clean)


@cases(300)
@given(
    spec=small_specs,
    upper=st.booleans(),
    per_layer=st.booleans(),
    skew=st.sampled_from([None, -30, -10, 0]),
    ranks=st.integers(1, 3),
    data=st.data(),
)
def test_merged_streams(spec, upper, per_layer, skew, ranks, data):
    """The distributed path: tiles (and their per-layer parts) in any dtype spread over
    several recorded streams and merged give bitwise the bounds of one stream fed every tile
    in row-major order, and those contain the exact truth."""
    a = build_small(spec)
    if skew is not None:
        a = _with_skew(a, skew, spec.seed)
    tiles = data.draw(tilings(spec.n, upper))
    wide = a.double()
    m = _assembled_upper(wide, tiles, 1) if upper else wide
    exact = ExactSpectrum(m)
    layers = ((wide * 0.75).to(a.dtype), (wide * 0.25).to(a.dtype)) if per_layer else ()
    sym = (lambda x: _assembled_upper(x.double(), tiles, 1)) if upper else (lambda x: x.double())
    promise_holds = all(ExactSpectrum(sym(x)).counts(0.0)[0] == 0 for x in (a, *layers))
    psd = promise_holds and data.draw(st.booleans())  # for the total and every part
    settings_ = {"upper": upper, "psd": psd, "per_layer": per_layer}
    parts = [StreamingBounds(spec.n, record=True, **settings_) for _ in range(ranks)]
    one = StreamingBounds(spec.n, **settings_)
    owner = data.draw(st.lists(st.integers(0, ranks - 1), min_size=len(tiles)), label="ranks")
    for (rows, cols), rank in zip(tiles, owner, strict=False):
        r, c = slice(*rows), slice(*cols)
        parts[rank].update(r, c, a[r, c])
        for i, p in enumerate(layers):
            parts[rank].update(r, c, p[r, c], layer=f"l{i}")
    for rows, cols in sorted(tiles, key=lambda t: (t[0][0], t[1][0])):
        r, c = slice(*rows), slice(*cols)
        one.update(r, c, a[r, c])
        for i, p in enumerate(layers):
            one.update(r, c, p[r, c], layer=f"l{i}")
    merged = StreamingBounds.merged([part.export() for part in parts])
    assert stream_results(merged) == stream_results(one)
    b = merged.bounds()
    assert exact.min_in(b.lambda_min_lower, b.lambda_min_upper), (b, tiles)
    assert exact.max_in(b.lambda_max_lower, b.lambda_max_upper), (b, tiles)
    if upper:
        assert _skew_sq(m) <= Fraction(merged.skew_frobenius_upper()) ** 2


# -- ntk_distance -------------------------------------------------------------------------
def _tile_stream(k: torch.Tensor, tiles):
    for rows, cols in tiles:
        yield (slice(*rows), slice(*cols)), k[slice(*rows), slice(*cols)]


@cases(700)
@given(s0=small_specs, s1=small_specs, data=st.data())
def test_ntk_distance_small(s0, s1, data):
    n = s0.n
    k0 = build_small(s0).double()
    k1 = build_small(SmallSpec(n, s1.kind, s1.scale, s1.dtype, s1.seed)).double()
    if s0.kind == "asymmetric" or s1.kind == "asymmetric":
        k0, k1 = (k0 + k0.T) / 2, (k1 + k1.T) / 2  # keep the 2-norm a symmetric question
    diff = [[Fraction(float(k1[i, j])) - Fraction(float(k0[i, j])) for j in range(n)]
            for i in range(n)]  # fmt: skip
    if any(not math.isfinite(float(x)) for row in diff for x in row):
        with pytest.raises(OverflowError):
            ntk_distance(k0, k1, "fro")
        return
    exact = ExactSpectrum(diff)
    f2 = sum((x * x for row in diff for x in row), Fraction(0))
    tiles = data.draw(tilings(n, True))
    kinds = {
        "stored": lambda: (k0, k1, None),
        "numpy": lambda: (k0.numpy(), k1.numpy(), None),
        "tiles": lambda: (_tile_stream(k0, tiles), _tile_stream(k1, tiles), n),
    }
    for name, make in kinds.items():
        for ord_ in ("fro", 2):
            a, b, size = make()
            got = ntk_distance(a, b, ord_, n=size)
            assert got.certified, (name, ord_)
            if ord_ == "fro":
                assert Fraction(got.lower) ** 2 <= f2 <= Fraction(got.upper) ** 2, (name, got)
            else:
                assert exact.norm2_in(got.lower, got.upper), (name, got)


# -- large matrices with exact integer spectra --------------------------------------------
@dataclass(frozen=True)
class LargeSpec:
    n: int
    spectrum: str
    p1: int
    p2: int
    scale: int
    seed: int


large_specs = st.builds(
    LargeSpec,
    n=st.one_of(st.integers(1, 40), st.integers(41, 300)),
    spectrum=st.sampled_from(["uniform", "psd", "clustered", "singular", "indefinite", "graded"]),
    p1=st.integers(0, 6),
    p2=st.integers(0, 6),
    scale=st.integers(-1000, 980),
    seed=st.integers(0, 2**31),
)


def _reflector(n: int, p: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """I − 2vvᵀ/vᵀv with v holding 2^p entries ±1 (p reduced to fit n); returns (H, the
    power of two that makes H integral)."""
    while 2**p > n:
        p -= 1
    v = torch.zeros(n, dtype=F64)
    idx = torch.randperm(n, generator=g)[: 2**p]
    v[idx] = torch.randint(0, 2, (2**p,), generator=g).to(F64) * 2 - 1
    return torch.eye(n, dtype=F64) - 2.0 ** (1 - p) * torch.outer(v, v), max(p - 1, 0)


def _integer_spectrum(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    r = torch.randint(-(2**12), 2**12 + 1, (n,), generator=g).to(F64)
    if kind == "psd":
        return r.abs()
    if kind == "clustered":
        return 4000 + torch.randint(0, 2, (n,), generator=g).to(F64)
    if kind == "singular":
        return r.abs() * (torch.rand(n, generator=g) < 0.6)
    if kind == "indefinite":
        return r - 100
    if kind == "graded":
        sign = torch.randint(0, 2, (n,), generator=g).to(F64) * 2 - 1
        return sign * 2.0 ** torch.randint(0, 13, (n,), generator=g).to(F64)
    return r


def build_large(spec: LargeSpec, d: torch.Tensor | None = None):
    """(A, d, k): A = 2^k·Q diag(d) Qᵀ exactly, Q a product of two dyadic reflectors."""
    g = torch.Generator().manual_seed(spec.seed)
    n = spec.n
    h1, s1 = _reflector(n, spec.p1, g)
    h2, s2 = _reflector(n, spec.p2, g)
    d = _integer_spectrum(spec.spectrum, n, g) if d is None else d
    s = s1 + s2
    qi = torch.ldexp(h1 @ h2, torch.tensor(float(s), dtype=F64))  # integers, |q| ≤ 2^s
    ai = (qi * d) @ qi.T  # integer partial sums below 2^53: exact
    k = max(spec.scale, 2 * s - 1074 + 60)
    a = scale_tensor(ai, k - 2 * s)
    assert torch.equal(scale_tensor(a, 2 * s - k), ai)  # the scaling was exact
    return a, d, k, (h1, h2)


def _exact_ends(d: torch.Tensor, k: int) -> tuple[Fraction, Fraction]:
    vals = d.tolist()
    return Fraction(min(vals)) * Fraction(2) ** k, Fraction(max(vals)) * Fraction(2) ** k


@cases(50)
@given(spec=large_specs, data=st.data())
def test_large_exact_spectra(spec, data):
    a, d, k, _ = build_large(spec)
    lo_true, hi_true = _exact_ends(d, k)
    for method in ("dense", "cholesky"):
        b = eig_bounds(a, method=method)
        assert b.certified_min and b.certified_max
        assert contains(b.lambda_min_lower, b.lambda_min_upper, lo_true), (method, b)
        assert contains(b.lambda_max_lower, b.lambda_max_upper, hi_true), (method, b)
    b = eig_bounds(a, method="lanczos")
    assert Fraction(b.lambda_min_upper) >= lo_true and Fraction(b.lambda_max_lower) <= hi_true
    upper = data.draw(st.booleans())
    psd = bool((d >= 0).all()) and data.draw(st.booleans())
    stream = StreamingBounds(spec.n, upper=upper, psd=psd)
    feed_tiles(stream, a, data.draw(tilings(spec.n, upper)), 1)
    sb = stream.bounds()
    assert contains(sb.lambda_min_lower, sb.lambda_min_upper, lo_true), sb
    assert contains(sb.lambda_max_lower, sb.lambda_max_upper, hi_true), sb


@cases(30)
@given(spec=large_specs, data=st.data())
def test_large_exact_distances(spec, data):
    k0, d0, k, _ = build_large(spec)
    g = torch.Generator().manual_seed(spec.seed + 1)
    d1 = d0 + torch.randint(-50, 51, (spec.n,), generator=g).to(F64)
    k1, _, _, _ = build_large(spec, d1)  # same reflectors (same seed), other eigenvalues
    step = (d1 - d0).abs().max().item()
    op_true = Fraction(step) * Fraction(2) ** k
    fro_true_sq = Fraction(sum(x * x for x in (d1 - d0).tolist())) * Fraction(2) ** (2 * k)
    tiles = data.draw(tilings(spec.n, True))
    for form in ("stored", "tiles"):
        for ord_ in ("fro", 2):
            if form == "stored":
                got = ntk_distance(k0, k1, ord_)
            else:
                got = ntk_distance(_tile_stream(k0, tiles), _tile_stream(k1, tiles), ord_,
                                   n=spec.n)  # fmt: skip
            assert got.certified
            if ord_ == "fro":
                assert Fraction(got.lower) ** 2 <= fro_true_sq <= Fraction(got.upper) ** 2
            else:
                assert contains(got.lower, got.upper, op_true), (form, got)


@cases(60)
@given(spec=small_specs)
def test_operator_forms_are_labelled_estimates(spec):
    a = build_small(spec).double()
    a = (a + a.T) / 2

    class Op:
        shape = tuple(a.shape)

        def matvec(self, v):
            return a @ v

    for ord_ in ("fro", 2):
        got = ntk_distance(Op(), torch.zeros_like(a), ord_)
        assert not got.certified
        mixed = ntk_distance(np.zeros(a.shape), Op(), ord_)
        assert not mixed.certified
    b = eig_bounds(Op(), method="lanczos")
    assert not b.certified_min and not b.certified_max
