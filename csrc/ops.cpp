// The kernels as torch operators (namespace `lplr`): schemas, CPU implementations and the
// CUDA registrations (real ones in cuda/ops_cuda.cpp; in a CPU-only build, ones that say
// the build lacks CUDA). Python: torch.ops.lplr.<name>; fake (meta) implementations for
// torch.compile live in lplr_fast/_ops.py.
#include <torch/library.h>

#include <optional>

#include "gram.h"
#include "message.h"
#include "spectral.h"

namespace lplr {
namespace {

void gram_accumulate_cpu_op(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                            const std::optional<at::Tensor>& a2,
                            const std::optional<at::Tensor>& g2, double beta, int64_t mode,
                            bool check_finite, int64_t route) {
  const GramCall call = check_gram_call(out, a1, g1, a2, g2, beta, mode, check_finite, route);
  LPLR_CHECK_VALUE(out.device().is_cpu(), "out is on ", out.device(),
                    " but the CPU kernel was dispatched; all arguments must be on one device");
  if (call.route == GramRoute::Gemm) {
    gram_accumulate_gemm(out, a1, g1, call.a2, call.g2, beta, call.shape, call.symmetric);
  } else {
    gram_accumulate_cpu(out, a1, g1, call.a2, call.g2, beta, call.shape, call.symmetric);
  }
}

#ifndef LPLR_WITH_CUDA
[[noreturn]] void no_cuda() {
  LPLR_CHECK_VALUE(false,
                    "lplr_fast._C was built without CUDA, so CUDA tensors cannot be processed; "
                    "rebuild on a machine with a CUDA-enabled torch and nvcc (README, GPU "
                    "machines) or move the tensors to the CPU");
}
void gram_no_cuda(at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
                  int64_t, bool, int64_t) {
  no_cuda();
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_no_cuda(const at::Tensor&, int64_t, int64_t) {
  no_cuda();
}
std::tuple<at::Tensor, at::Tensor> square_no_cuda(const at::Tensor&) { no_cuda(); }
at::Tensor pair_no_cuda(const at::Tensor&, const at::Tensor&) { no_cuda(); }
#endif

}  // namespace
}  // namespace lplr

TORCH_LIBRARY(lplr, m) {
  m.def(
      "gram_accumulate_(Tensor(a!) out, Tensor a1, Tensor g1, Tensor? a2, Tensor? g2, "
      "float beta, int compute_mode, bool check_finite, int route) -> ()");
  m.def("tile_stats(Tensor tile, int row0, int col0) -> (Tensor, Tensor, Tensor)");
  m.def("square_stats(Tensor a) -> (Tensor, Tensor)");
  m.def("symv_upper(Tensor a, Tensor v) -> Tensor");
  m.def("abs_quadratic(Tensor a, Tensor v) -> Tensor");
}

TORCH_LIBRARY_IMPL(lplr, CPU, m) {
  m.impl("gram_accumulate_", &lplr::gram_accumulate_cpu_op);
  m.impl("tile_stats", &lplr::tile_stats_cpu);
  m.impl("square_stats", &lplr::square_stats_cpu);
  m.impl("symv_upper", &lplr::symv_upper_cpu);
  m.impl("abs_quadratic", &lplr::abs_quadratic_cpu);
}

#ifndef LPLR_WITH_CUDA
TORCH_LIBRARY_IMPL(lplr, CUDA, m) {
  m.impl("gram_accumulate_", &lplr::gram_no_cuda);
  m.impl("tile_stats", &lplr::tile_no_cuda);
  m.impl("square_stats", &lplr::square_no_cuda);
  m.impl("symv_upper", &lplr::pair_no_cuda);
  m.impl("abs_quadratic", &lplr::pair_no_cuda);
}
#endif
