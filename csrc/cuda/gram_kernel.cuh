// Fused per-layer NTK Gram accumulation on the GPU, free of torch headers so that
// `nvcc -c -arch=sm_90` can compile-check it on a machine without a CUDA torch.
//
//   out[i, j, c, c'] += (a1_i . a2_j + beta) * (g1_{i,c} . g2_{j,c'})      mode Full
//   out[i, j]        += (a1_i . a2_j + beta) * sum_c g1_{i,c} . g2_{j,c}   mode Trace
//   out[i, j, c]     += (a1_i . a2_j + beta) * (g1_{i,c} . g2_{j,c})       mode Diagonal
//
// One thread block owns a kTile x kTile tile of sample pairs (i, j). It forms the
// activation-Gram tile once (kept in registers), then for each output pair (c, c')
// the cotangent-Gram tile, multiplies in registers and accumulates straight into
// `out`. No n x n intermediate ever reaches global memory.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

#include "gram_launch.h"

namespace lplr {
namespace cuda {

constexpr int kTile = 64;   // samples per tile side
constexpr int kStep = 16;   // reduction chunk staged in shared memory
constexpr int kThreadsSide = 16;
constexpr int kMicro = kTile / kThreadsSide;  // 4 x 4 results per thread

// acc[m][n] = sum_q X[x0 + ty + 16 m, q] * Y[y0 + tx + 16 n, q]
// Rows of X start at X + row * ldx; `len` is the reduction length.
template <typename T>
__device__ __forceinline__ void tile_dot(const T* __restrict__ X, int64_t ldx, int64_t nx, int64_t x0,
                                         const T* __restrict__ Y, int64_t ldy, int64_t ny, int64_t y0,
                                         int64_t len, T (&acc)[kMicro][kMicro],
                                         T (*xs)[kTile + 1], T (*ys)[kTile + 1]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreadsSide + tx;
#pragma unroll
  for (int m = 0; m < kMicro; ++m)
#pragma unroll
    for (int n = 0; n < kMicro; ++n) acc[m][n] = T(0);

  for (int64_t q0 = 0; q0 < len; q0 += kStep) {
#pragma unroll
    for (int l = 0; l < (kTile * kStep) / (kThreadsSide * kThreadsSide); ++l) {
      const int e = tid + l * kThreadsSide * kThreadsSide;
      const int row = e / kStep, q = e % kStep;
      const int64_t gq = q0 + q;
      const int64_t xr = x0 + row, yr = y0 + row;
      xs[q][row] = (xr < nx && gq < len) ? X[xr * ldx + gq] : T(0);
      ys[q][row] = (yr < ny && gq < len) ? Y[yr * ldy + gq] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kStep; ++q) {
      T xv[kMicro], yv[kMicro];
#pragma unroll
      for (int m = 0; m < kMicro; ++m) xv[m] = xs[q][ty + kThreadsSide * m];
#pragma unroll
      for (int n = 0; n < kMicro; ++n) yv[n] = ys[q][tx + kThreadsSide * n];
#pragma unroll
      for (int m = 0; m < kMicro; ++m)
#pragma unroll
        for (int n = 0; n < kMicro; ++n) acc[m][n] += xv[m] * yv[n];
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreadsSide* kThreadsSide)
    gram_accumulate_kernel(const GramParams<T> prm) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  if (prm.symmetric && bj < bi) return;
  const bool mirror = prm.symmetric && bj != bi;
  const int64_t i0 = bi * kTile, j0 = bj * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;

  __shared__ T xs[kStep][kTile + 1];
  __shared__ T ys[kStep][kTile + 1];

  T sa[kMicro][kMicro];
  tile_dot<T>(prm.a1, prm.d, prm.n1, i0, prm.a2, prm.d, prm.n2, j0, prm.d, sa, xs, ys);
#pragma unroll
  for (int m = 0; m < kMicro; ++m)
#pragma unroll
    for (int n = 0; n < kMicro; ++n) sa[m][n] += prm.beta;

  const int64_t k = prm.k, p = prm.p, ldg = prm.k * prm.p;
  T sg[kMicro][kMicro];

  if (prm.mode == kGramTrace) {
    T tr[kMicro][kMicro];
#pragma unroll
    for (int m = 0; m < kMicro; ++m)
#pragma unroll
      for (int n = 0; n < kMicro; ++n) tr[m][n] = T(0);
    for (int64_t c = 0; c < k; ++c) {
      tile_dot<T>(prm.g1 + c * p, ldg, prm.n1, i0, prm.g2 + c * p, ldg, prm.n2, j0, p, sg, xs, ys);
#pragma unroll
      for (int m = 0; m < kMicro; ++m)
#pragma unroll
        for (int n = 0; n < kMicro; ++n) tr[m][n] += sg[m][n];
    }
#pragma unroll
    for (int m = 0; m < kMicro; ++m) {
      const int64_t i = i0 + ty + kThreadsSide * m;
#pragma unroll
      for (int n = 0; n < kMicro; ++n) {
        const int64_t j = j0 + tx + kThreadsSide * n;
        if (i < prm.n1 && j < prm.n2) {
          const T v = sa[m][n] * tr[m][n];
          prm.out[i * prm.n2 + j] += v;
          if (mirror) prm.out[j * prm.n2 + i] += v;
        }
      }
    }
    return;
  }

  const bool full = prm.mode == kGramFull;
  for (int64_t c = 0; c < k; ++c) {
    const int64_t c2_begin = full ? 0 : c, c2_end = full ? k : c + 1;
    for (int64_t c2 = c2_begin; c2 < c2_end; ++c2) {
      tile_dot<T>(prm.g1 + c * p, ldg, prm.n1, i0, prm.g2 + c2 * p, ldg, prm.n2, j0, p, sg, xs, ys);
#pragma unroll
      for (int m = 0; m < kMicro; ++m) {
        const int64_t i = i0 + ty + kThreadsSide * m;
#pragma unroll
        for (int n = 0; n < kMicro; ++n) {
          const int64_t j = j0 + tx + kThreadsSide * n;
          if (i < prm.n1 && j < prm.n2) {
            const T v = sa[m][n] * sg[m][n];
            if (full) {
              prm.out[((i * prm.n2 + j) * k + c) * k + c2] += v;
              if (mirror) prm.out[((j * prm.n2 + i) * k + c2) * k + c] += v;
            } else {
              prm.out[(i * prm.n2 + j) * k + c] += v;
              if (mirror) prm.out[(j * prm.n2 + i) * k + c] += v;
            }
          }
        }
      }
    }
  }
}

template <typename T>
cudaError_t launch_gram_accumulate(const GramParams<T>& prm, cudaStream_t stream) {
  if (prm.n1 == 0 || prm.n2 == 0) return cudaSuccess;
  const dim3 block(kThreadsSide, kThreadsSide);
  const dim3 grid(static_cast<unsigned>((prm.n2 + kTile - 1) / kTile),
                  static_cast<unsigned>((prm.n1 + kTile - 1) / kTile));
  gram_accumulate_kernel<T><<<grid, block, 0, stream>>>(prm);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lplr
