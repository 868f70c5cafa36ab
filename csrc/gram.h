// Fused per-layer NTK Gram accumulation: declarations shared by the bindings,
// the CPU kernel and the CUDA dispatcher. ATen-only headers (fast to compile).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/StringUtil.h>

#include <cstdint>
#include <stdexcept>

namespace lplr {

// Bumped whenever a kernel's signature or semantics change; the Python layer refuses a
// compiled module whose number differs (a stale build).
constexpr int64_t kKernelApiVersion = 1;

// Argument errors, translated to Python ValueError / TypeError by the bindings. They are not
// c10::Error on purpose: c10::Error captures a stack trace when constructed, and with torch
// 2.11 (CUDA build, gcc 13) that walk segfaults inside the unwinder (cf. pytorch#117645).
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

#define LPLR_CHECK_VALUE(cond, ...)                                   \
  do {                                                                \
    if (!(cond)) throw ::lplr::ValueError(::c10::str(__VA_ARGS__));   \
  } while (0)
#define LPLR_CHECK_TYPE(cond, ...)                                    \
  do {                                                                \
    if (!(cond)) throw ::lplr::TypeError(::c10::str(__VA_ARGS__));    \
  } while (0)

enum class GramMode : int64_t { Full = 0, Trace = 1, Diagonal = 2 };

// Shapes of one accumulation call, validated.
struct GramShape {
  int64_t n1, n2, d, k, p;
  GramMode mode;
};

// Validates a1 (n1, d), g1 (n1, k, p), a2 (n2, d), g2 (n2, k, p) and out
// ((n1, n2, k, k) | (n1, n2) | (n1, n2, k) by mode): ranks, matching sizes, one floating
// dtype (float32/float64), one device, finite beta and, when check_finite, finite inputs.
// Errors are ValueError/TypeError in Python and name the offending argument.
GramShape check_gram_args(const at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta, int64_t mode,
                          bool check_finite);

// out += (a1 a2^T + beta) (.) (g1 g2^T) in the layout of `mode`. When `symmetric`, a2/g2 are
// a1/g1 and only the upper triangle of sample pairs is computed, then mirrored.
void gram_accumulate_cpu(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                         const at::Tensor& a2, const at::Tensor& g2, double beta,
                         const GramShape& shape, bool symmetric);

#ifdef LPLR_WITH_CUDA
void gram_accumulate_cuda(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta,
                          const GramShape& shape, bool symmetric);
#endif

}  // namespace lplr
