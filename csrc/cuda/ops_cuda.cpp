// CUDA implementations of the lplr operators (compiled only with LPLR_WITH_CUDA): the Gram
// accumulation through gram_cuda.cpp, the spectral reductions through their device-generic
// ATen face (elementwise passes and cuBLAS products, no host round trips).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "../gram.h"
#include "../message.h"
#include "../spectral.h"

namespace lplr {
namespace {

void gram_accumulate_cuda_op(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                             const std::optional<at::Tensor>& a2,
                             const std::optional<at::Tensor>& g2, double beta, int64_t mode,
                             bool check_finite, int64_t route) {
  const GramCall call = check_gram_call(out, a1, g1, a2, g2, beta, mode, check_finite, route);
  LPLR_CHECK_VALUE(out.is_cuda(), "out is on ", out.device(), " but a CUDA kernel was asked for");
  gram_accumulate_cuda(out, a1, g1, call.a2, call.g2, beta, call.shape, call.symmetric,
                       call.route);
}

template <typename Fn>
auto on_device_of(const at::Tensor& t, Fn fn) {
  const c10::cuda::CUDAGuard guard(t.device());
  return fn();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_cuda(const at::Tensor& t, int64_t r0,
                                                               int64_t c0) {
  return on_device_of(t, [&] { return tile_stats_generic(t, r0, c0); });
}
std::tuple<at::Tensor, at::Tensor> square_stats_cuda(const at::Tensor& a) {
  return on_device_of(a, [&] { return square_stats_generic(a); });
}
at::Tensor symv_upper_cuda(const at::Tensor& a, const at::Tensor& v) {
  return on_device_of(a, [&] { return symv_upper_generic(a, v); });
}
at::Tensor abs_quadratic_cuda(const at::Tensor& a, const at::Tensor& v) {
  return on_device_of(a, [&] { return abs_quadratic_generic(a, v); });
}

}  // namespace
}  // namespace lplr

TORCH_LIBRARY_IMPL(lplr, CUDA, m) {
  m.impl("gram_accumulate_", &lplr::gram_accumulate_cuda_op);
  m.impl("tile_stats", &lplr::tile_stats_cuda);
  m.impl("square_stats", &lplr::square_stats_cuda);
  m.impl("symv_upper", &lplr::symv_upper_cuda);
  m.impl("abs_quadratic", &lplr::abs_quadratic_cuda);
}
