// Fused per-layer NTK Gram accumulation: declarations shared by the op registrations, the
// CPU kernel, the device-generic GEMM route and the CUDA dispatcher. ATen-only headers.
//
//   out[i, j, c, c'] += (a1_i . a2_j + beta) * (g1_{i,c} . g2_{j,c'})      mode Full
//   out[i, j]        += (a1_i . a2_j + beta) * sum_c g1_{i,c} . g2_{j,c}   mode Trace
//   out[i, j, c]     += (a1_i . a2_j + beta) * (g1_{i,c} . g2_{j,c})       mode Diagonal
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace lplr {

// Bumped whenever a kernel's signature or semantics change; the Python layer refuses a
// compiled module whose number differs (a stale build).
constexpr int64_t kKernelApiVersion = 3;

enum class GramMode : int64_t { Full = 0, Trace = 1, Diagonal = 2 };

// How the accumulation is computed. Every route gives the same numbers up to rounding.
//   Auto:  the CPU kernel on CPU; on CUDA the GEMM route except where the fused kernel wins.
//   Gemm:  BLAS/cuBLAS GEMMs for the two Grams per block pair, then one elementwise
//          Hadamard-accumulate pass (ATen); symmetric inputs compute the upper block
//          triangle only (diagonal blocks in full, so the result is symmetric up to
//          rounding, not bitwise). Runs on any device (on CPU it exists for tests).
//   Fused: the fused kernel of the device (CPU: GEMM + OpenMP epilogue per row chunk;
//          CUDA: one tiled kernel forming both Grams in registers).
enum class GramRoute : int64_t { Auto = 0, Gemm = 1, Fused = 2 };

// Shapes of one accumulation call, validated.
struct GramShape {
  int64_t n1 = 0, n2 = 0, d = 0, k = 0, p = 0;
  GramMode mode = GramMode::Full;
};

// Validates a1 (n1, d), g1 (n1, k, p), a2 (n2, d), g2 (n2, k, p) and out
// ((n1, n2, k, k) | (n1, n2) | (n1, n2, k) by mode): ranks, matching sizes, one floating
// dtype (float32/float64), one device, contiguous out, finite beta and, when check_finite,
// finite inputs. Throws c10::ValueError / c10::TypeError (Python ValueError / TypeError)
// naming the offending argument.
GramShape check_gram_args(const at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta, int64_t mode,
                          bool check_finite);

// One call of the operator, checked: the column operands (a1/g1 themselves when a2/g2 are
// None, the symmetric case), the shapes and the route.
struct GramCall {
  const at::Tensor& a2;
  const at::Tensor& g2;
  bool symmetric;
  GramShape shape;
  GramRoute route;
};

GramCall check_gram_call(const at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                         const std::optional<at::Tensor>& a2, const std::optional<at::Tensor>& g2,
                         double beta, int64_t mode, bool check_finite, int64_t route);

// out += (a1 a2^T + beta) (.) (g1 g2^T) in the layout of `mode`. When `symmetric`, a2/g2 are
// a1/g1 and only the upper triangle of sample pairs is computed, then mirrored (bitwise
// symmetric result).
void gram_accumulate_cpu(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                         const at::Tensor& a2, const at::Tensor& g2, double beta,
                         const GramShape& shape, bool symmetric);

// The same through GEMMs on any device (ATen ops only): the sample range is cut into
// blocks, both Grams of a block pair come from one GEMM each, and one elementwise pass adds
// (A + beta) (.) G into `out` (and its transpose into the mirrored block when symmetric).
void gram_accumulate_gemm(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta,
                          const GramShape& shape, bool symmetric);

#ifdef LPLR_WITH_CUDA
void gram_accumulate_cuda(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta,
                          const GramShape& shape, bool symmetric, GramRoute route);
#endif

}  // namespace lplr
