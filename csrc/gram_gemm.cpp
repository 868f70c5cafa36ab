// The GEMM route of the Gram accumulation, in ATen ops only, so one source serves every
// device: cuBLAS on CUDA (the default there), BLAS on CPU (where it exists to be tested).
//
// The sample range is cut into blocks. For a block pair (I, J) one GEMM gives the
// activation Gram A = a1[I] a2[J]^T, one GEMM (a batched one for mode Diagonal) the
// cotangent Gram G, and one elementwise pass adds (A + beta) (.) G into out[I, J] in out's
// layout. Symmetric inputs visit J >= I only: off-diagonal pairs also add the transpose into
// out[J, I]; a diagonal pair takes both of its triangles from its GEMM, so the result is
// symmetric up to rounding, not bitwise (the NTK engine symmetrises whole tiles once, after
// every layer has been added, instead of once per layer here).
#include "gram.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>

namespace lplr {
namespace {

constexpr int64_t kMinGemmRows = 2048;  // rows of one block GEMM, where the GEMM runs near peak
constexpr int64_t kMaxBlocks = 8;       // per side: computes (b + 1) / (2b) of the square

// Samples per block: at most kMaxBlocks blocks per side, each GEMM at least kMinGemmRows
// rows (k rows per sample in mode Full), rounded up to a multiple of 32. The environment
// variable LPLR_GEMM_BLOCK_SAMPLES overrides it (tuning and tests).
int64_t block_samples(const GramShape& s) {
  if (const char* env = std::getenv("LPLR_GEMM_BLOCK_SAMPLES")) {
    const long long forced = std::atoll(env);
    if (forced > 0) return forced;
  }
  const int64_t rows_per_sample = s.mode == GramMode::Full ? s.k : 1;
  const int64_t n = std::max(s.n1, s.n2);
  int64_t nb = std::max((n + kMaxBlocks - 1) / kMaxBlocks,
                        (kMinGemmRows + rows_per_sample - 1) / std::max<int64_t>(1, rows_per_sample));
  nb = (nb + 31) / 32 * 32;
  return std::max<int64_t>(1, nb);
}

// The cotangent Gram of a block pair: (bi k, bj k) | (bi, bj) | (k, bi, bj) by mode.
at::Tensor cotangent_gram(const at::Tensor& g1, const at::Tensor& g2, const GramShape& s) {
  const int64_t bi = g1.size(0), bj = g2.size(0);
  switch (s.mode) {
    case GramMode::Full:
      return at::mm(g1.reshape({bi * s.k, s.p}), g2.reshape({bj * s.k, s.p}).t());
    case GramMode::Trace:
      return at::mm(g1.reshape({bi, s.k * s.p}), g2.reshape({bj, s.k * s.p}).t());
    case GramMode::Diagonal:
    default:
      return at::bmm(g1.transpose(0, 1), g2.permute({1, 2, 0}));
  }
}

// (A + beta) (.) G as a view broadcast to out's block layout (bi, bj[, k[, k]]), and the same
// for the transposed block (bj, bi[, k[, k]]).
std::pair<at::Tensor, at::Tensor> weight_views(const at::Tensor& w, const GramShape& s) {
  switch (s.mode) {
    case GramMode::Full:
      return {w.unsqueeze(-1).unsqueeze(-1), w.t().unsqueeze(-1).unsqueeze(-1)};
    case GramMode::Trace:
      return {w, w.t()};
    case GramMode::Diagonal:
    default:
      return {w.unsqueeze(-1), w.t().unsqueeze(-1)};
  }
}

std::pair<at::Tensor, at::Tensor> gram_views(const at::Tensor& g, int64_t bi, int64_t bj,
                                             const GramShape& s) {
  switch (s.mode) {
    case GramMode::Full: {
      const at::Tensor v = g.view({bi, s.k, bj, s.k});
      return {v.permute({0, 2, 1, 3}), v.permute({2, 0, 3, 1})};
    }
    case GramMode::Trace:
      return {g, g.t()};
    case GramMode::Diagonal:
    default:
      return {g.permute({1, 2, 0}), g.permute({2, 1, 0})};
  }
}

at::Tensor block_of(const at::Tensor& out, int64_t i0, int64_t bi, int64_t j0, int64_t bj) {
  return out.narrow(0, i0, bi).narrow(1, j0, bj);
}

}  // namespace

void gram_accumulate_gemm(at::Tensor& out, const at::Tensor& a1_in, const at::Tensor& g1_in,
                          const at::Tensor& a2_in, const at::Tensor& g2_in, double beta,
                          const GramShape& s, bool symmetric) {
  if (s.n1 == 0 || s.n2 == 0) return;
  const at::Tensor a1 = a1_in.contiguous(), g1 = g1_in.contiguous();
  const at::Tensor a2 = symmetric ? a1 : a2_in.contiguous();
  const at::Tensor g2 = symmetric ? g1 : g2_in.contiguous();
  const int64_t nb = block_samples(s);
  for (int64_t i0 = 0; i0 < s.n1; i0 += nb) {
    const int64_t bi = std::min(nb, s.n1 - i0);
    for (int64_t j0 = symmetric ? i0 : 0; j0 < s.n2; j0 += nb) {
      const int64_t bj = std::min(nb, s.n2 - j0);
      const at::Tensor w = at::mm(a1.narrow(0, i0, bi), a2.narrow(0, j0, bj).t()).add_(beta);
      const at::Tensor g = cotangent_gram(g1.narrow(0, i0, bi), g2.narrow(0, j0, bj), s);
      const auto [w_ij, w_ji] = weight_views(w, s);
      const auto [g_ij, g_ji] = gram_views(g, bi, bj, s);
      block_of(out, i0, bi, j0, bj).addcmul_(w_ij, g_ij);
      if (symmetric && i0 != j0) block_of(out, j0, bj, i0, bi).addcmul_(w_ji, g_ji);
    }
  }
}

}  // namespace lplr
