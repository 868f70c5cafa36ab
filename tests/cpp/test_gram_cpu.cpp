// C++ test of the CPU Gram kernel against naive loops (run by ctest).
#include <ATen/ATen.h>

#include <cmath>
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gram.h"

namespace {

int failures = 0;
int cases = 0;

double naive_entry(const at::Tensor& a1, const at::Tensor& g1, const at::Tensor& a2,
                   const at::Tensor& g2, double beta, int64_t i, int64_t j, int64_t c, int64_t c2) {
  double aa = beta, gg = 0.0;
  auto A1 = a1.accessor<double, 2>(), A2 = a2.accessor<double, 2>();
  auto G1 = g1.accessor<double, 3>(), G2 = g2.accessor<double, 3>();
  for (int64_t q = 0; q < a1.size(1); ++q) aa += A1[i][q] * A2[j][q];
  for (int64_t q = 0; q < g1.size(2); ++q) gg += G1[i][c][q] * G2[j][c2][q];
  return aa * gg;
}

void run_case(int64_t n1, int64_t n2, int64_t d, int64_t k, int64_t p, bool symmetric,
              bool gemm_route = false) {
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  at::Tensor a1 = at::randn({n1, d}, opt), g1 = at::randn({n1, k, p}, opt);
  at::Tensor a2 = symmetric ? a1 : at::randn({n2, d}, opt);
  at::Tensor g2 = symmetric ? g1 : at::randn({n2, k, p}, opt);
  if (symmetric) n2 = n1;
  const double beta = 0.5;
  for (int64_t mode = 0; mode < 3; ++mode) {
    at::Tensor out = mode == 0 ? at::zeros({n1, n2, k, k}, opt)
                   : mode == 1 ? at::zeros({n1, n2}, opt)
                               : at::zeros({n1, n2, k}, opt);
    const lplr::GramShape shape = lplr::check_gram_args(out, a1, g1, a2, g2, beta, mode, true);
    if (gemm_route) {
      lplr::gram_accumulate_gemm(out, a1, g1, a2, g2, beta, shape, symmetric);
    } else {
      lplr::gram_accumulate_cpu(out, a1, g1, a2, g2, beta, shape, symmetric);
    }
    double max_err = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < n1; ++i)
      for (int64_t j = 0; j < n2; ++j)
        for (int64_t c = 0; c < k; ++c)
          for (int64_t c2 = 0; c2 < k; ++c2) {
            double ref, got;
            if (mode == 0) {
              ref = naive_entry(a1, g1, a2, g2, beta, i, j, c, c2);
              got = out[i][j][c][c2].item<double>();
            } else if (c2 != c) {
              continue;
            } else if (mode == 2) {
              ref = naive_entry(a1, g1, a2, g2, beta, i, j, c, c);
              got = out[i][j][c].item<double>();
            } else {
              if (c != 0) continue;
              ref = 0.0;
              for (int64_t cc = 0; cc < k; ++cc) ref += naive_entry(a1, g1, a2, g2, beta, i, j, cc, cc);
              got = out[i][j].item<double>();
            }
            max_err = std::max(max_err, std::fabs(ref - got));
            max_ref = std::max(max_ref, std::fabs(ref));
          }
    const bool ok = max_err <= 1e-12 * std::max(1.0, max_ref);
    std::printf("%s %s n1=%lld n2=%lld k=%lld mode=%lld sym=%d max_err=%.3g\n",
                ok ? "ok  " : "FAIL", gemm_route ? "gemm " : "fused", (long long)n1,
                (long long)n2, (long long)k, (long long)mode, int(symmetric), max_err);
    failures += ok ? 0 : 1;
    ++cases;
  }
}

}  // namespace

int main() {
  at::manual_seed(7);
  run_case(9, 7, 5, 3, 4, false);
  run_case(12, 12, 6, 2, 3, true);
  run_case(1, 1, 1, 1, 1, true);
  setenv("LPLR_GEMM_BLOCK_SAMPLES", "4", 1);  // several block pairs, ragged last block
  run_case(9, 7, 5, 3, 4, false, true);
  run_case(13, 13, 6, 2, 3, true, true);
  run_case(1, 1, 1, 1, 1, true, true);
  {  // a bad argument throws c10::ValueError naming it
    const auto opt = at::TensorOptions().dtype(at::kDouble);
    at::Tensor a = at::randn({4, 3}, opt), g = at::randn({4, 2}, opt);
    at::Tensor out = at::zeros({4, 4, 2, 2}, opt);
    std::string message;
    try {
      lplr::check_gram_args(out, a, g, a, g, 1.0, 0, true);
    } catch (const c10::ValueError& e) {
      message = e.what_without_backtrace();
    }
    const bool ok = message.find("g1 must be 3-D") != std::string::npos;
    std::printf("%s bad-rank error: %s\n", ok ? "ok  " : "FAIL", message.c_str());
    failures += ok ? 0 : 1;
  }
  ++cases;
  std::printf("%d passed, %d failed\n", cases - failures, failures);
  return failures == 0 ? 0 : 1;
}
