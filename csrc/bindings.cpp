// pybind11 bindings of lplr_fast._C: the only translation unit that includes
// <torch/extension.h>. Kernels live in cpu/ and cuda/ and include ATen only.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <optional>

#include "gram.h"
#include "spectral.h"

#ifndef LPLR_SOURCE_HASH
#define LPLR_SOURCE_HASH "unknown"
#endif

namespace {

// Returns "" on success, else "ValueError: ..." / "TypeError: ..." (raised by the Python
// wrapper; see gram.h for why no exception is thrown here).
std::string gram_accumulate(at::Tensor out, const at::Tensor& a1, const at::Tensor& g1,
                           const std::optional<at::Tensor>& a2, const std::optional<at::Tensor>& g2,
                           double beta, int64_t mode, bool check_finite) {
  if (a2.has_value() != g2.has_value())
    return "ValueError: a2 and g2 must both be given (cross kernel) or both be None (symmetric)";
  const bool symmetric = !a2.has_value();
  const at::Tensor& a2_ref = symmetric ? a1 : *a2;
  const at::Tensor& g2_ref = symmetric ? g1 : *g2;
  const lplr::GramCheck check =
      lplr::check_gram_args(out, a1, g1, a2_ref, g2_ref, beta, mode, check_finite);
  if (!check.ok())
    return (check.kind == lplr::ErrorKind::Type ? "TypeError: " : "ValueError: ") + check.message;
  const lplr::GramShape& shape = check.shape;
  if (out.is_cuda()) {
#ifdef LPLR_WITH_CUDA
    lplr::gram_accumulate_cuda(out, a1, g1, a2_ref, g2_ref, beta, shape, symmetric);
#else
    return lplr::msg("ValueError: lplr_fast._C was built without CUDA; tensors on ", out.device(),
                    " cannot be processed. Rebuild with a CUDA-enabled torch and nvcc.");
#endif
  } else {
    if (!out.device().is_cpu()) return lplr::msg("ValueError: unsupported device ", out.device());
    lplr::gram_accumulate_cpu(out, a1, g1, a2_ref, g2_ref, beta, shape, symmetric);
  }
  return "";
}

py::dict build_info() {
  py::dict info;
  info["kernel_api_version"] = lplr::kKernelApiVersion;
  info["source_hash"] = std::string(LPLR_SOURCE_HASH);
#ifdef LPLR_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_max_threads"] = 1;
#endif
#ifdef __OPTIMIZE__
  info["optimized"] = true;
#else
  info["optimized"] = false;
#endif
  info["compiler"] = std::string(__VERSION__);
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lplr_fast compiled kernels (CPU always, CUDA when built with it)";
  m.def("gram_accumulate", &gram_accumulate, py::arg("out"), py::arg("a1"), py::arg("g1"),
        py::arg("a2") = py::none(), py::arg("g2") = py::none(), py::arg("beta") = 1.0,
        py::arg("mode") = 0, py::arg("check_finite") = true,
        "out += (a1 a2^T + beta) (.) (g1 g2^T) in place; a2/g2 None means the symmetric case.\n"
        "a: (n, d_in); g: (n, k, d_out); out: (n1, n2, k, k) | (n1, n2) | (n1, n2, k) for mode\n"
        "0 (full) | 1 (trace) | 2 (diagonal). Returns '' or 'ValueError: ...'/'TypeError: ...'.");
  m.def("tile_stats", &lplr::tile_stats_cpu, py::arg("tile"), py::arg("row0"), py::arg("col0"),
        "One pass over a 2-D CPU tile at (row0, col0) of a larger matrix: returns float64\n"
        "([non-finite count, sum of squares, max |t|, diagonal sum], off-diagonal row |.| sums,\n"
        "off-diagonal column |.| sums).");
  m.def("square_stats", &lplr::square_stats_cpu, py::arg("a"),
        "One pass over a square 2-D CPU matrix: float64 ([non-finite count, ||A - A^T||_F^2,\n"
        "||A||_F^2, max |a|, trace, max |a_ii|], off-diagonal row |.| sums).");
  m.def("symv_upper", &lplr::symv_upper_cpu, py::arg("a"), py::arg("v"),
        "y = S v, S symmetric with the upper triangle of the 2-D CPU matrix a (lower never read).");
  m.def("abs_quadratic", &lplr::abs_quadratic_cpu, py::arg("a"), py::arg("v"),
        "|v|^T |A| |v| in float64 for a square 2-D CPU matrix a and a vector v.");
  m.def("build_info", &build_info, "How this module was built (cuda, openmp, threads, hash)");
}
