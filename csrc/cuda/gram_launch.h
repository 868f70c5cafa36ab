// Host-side declarations of the CUDA launchers (no torch headers, no device code).
#pragma once

#include <cuda_runtime_api.h>
#include <cstdint>

namespace lplr {
namespace cuda {

enum GramModeCode : int { kGramFull = 0, kGramTrace = 1, kGramDiagonal = 2 };

template <typename T>
struct GramParams {
  const T* a1;  // (n1, d) row-major
  const T* g1;  // (n1, k, p) row-major
  const T* a2;  // (n2, d)
  const T* g2;  // (n2, k, p)
  T* out;       // (n1, n2, k, k) | (n1, n2) | (n1, n2, k), row-major
  int64_t n1, n2, d, k, p;
  T beta;
  int mode;
  bool symmetric;  // a1 is a2 and g1 is g2: only tiles with bj >= bi run, mirrored.
};

template <typename T>
cudaError_t launch_gram_accumulate(const GramParams<T>& prm, cudaStream_t stream);

}  // namespace cuda
}  // namespace lplr
