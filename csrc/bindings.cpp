// pybind11 module lplr_fast._C: how the module was built, plus the device-generic faces of
// the spectral reductions for tests on any device. The kernels themselves are torch
// operators (ops.cpp: torch.ops.lplr.*), registered when this module is loaded.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gram.h"
#include "spectral.h"

#ifndef LPLR_SOURCE_HASH
#define LPLR_SOURCE_HASH "unknown"
#endif

namespace {

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
  m.doc() = "lplr_fast compiled kernels: torch.ops.lplr.* (CPU always, CUDA when built with it)";
  m.def("build_info", &build_info, "How this module was built (cuda, openmp, threads, hash)");
  m.def("tile_stats_generic", &lplr::tile_stats_generic, py::arg("tile"), py::arg("row0"),
        py::arg("col0"), "Device-generic face of torch.ops.lplr.tile_stats (tests)");
  m.def("square_stats_generic", &lplr::square_stats_generic, py::arg("a"),
        "Device-generic face of torch.ops.lplr.square_stats (tests)");
  m.def("symv_upper_generic", &lplr::symv_upper_generic, py::arg("a"), py::arg("v"),
        "Device-generic face of torch.ops.lplr.symv_upper (tests)");
  m.def("abs_quadratic_generic", &lplr::abs_quadratic_generic, py::arg("a"), py::arg("v"),
        "Device-generic face of torch.ops.lplr.abs_quadratic (tests)");
}
