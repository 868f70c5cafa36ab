// CUDA dispatcher of the Gram accumulation (compiled only with LPLR_WITH_CUDA): the GEMM
// route (cuBLAS + one elementwise pass, see gram_gemm.cpp) or the fused tiled kernel
// (gram_kernel.cuh).
#include "../gram.h"
#include "../message.h"
#include "gram_launch.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace lplr {
namespace {

void launch_fused(at::Tensor& out, const at::Tensor& a1_in, const at::Tensor& g1_in,
                  const at::Tensor& a2_in, const at::Tensor& g2_in, double beta,
                  const GramShape& s, bool symmetric) {
  const at::Tensor a1 = a1_in.contiguous(), g1 = g1_in.contiguous();
  const at::Tensor a2 = symmetric ? a1 : a2_in.contiguous();
  const at::Tensor g2 = symmetric ? g1 : g2_in.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gram_accumulate_cuda", [&] {
    cuda::GramParams<scalar_t> prm{a1.data_ptr<scalar_t>(), g1.data_ptr<scalar_t>(),
                                   a2.data_ptr<scalar_t>(), g2.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), s.n1, s.n2, s.d, s.k, s.p,
                                   static_cast<scalar_t>(beta), static_cast<int>(s.mode),
                                   symmetric};
    const cudaError_t err = cuda::launch_gram_accumulate<scalar_t>(prm, stream);
    TORCH_CHECK(err == cudaSuccess,
                ::lplr::msg("gram_accumulate CUDA launch failed: ", cudaGetErrorString(err)));
  });
}

}  // namespace

void gram_accumulate_cuda(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta,
                          const GramShape& s, bool symmetric, GramRoute route) {
  if (s.n1 == 0 || s.n2 == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  if (route == GramRoute::Fused) {
    launch_fused(out, a1, g1, a2, g2, beta, s, symmetric);
  } else {
    gram_accumulate_gemm(out, a1, g1, a2, g2, beta, s, symmetric);
  }
}

}  // namespace lplr
