// CPU face of the spectral reductions (see spectral.h). OpenMP over row blocks; every
// reduction is accumulated in float64 whatever the input dtype.
#include "../spectral.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace lplr {
namespace {

constexpr int64_t kBlock = 64;

int thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// out[e] = Σ over threads of part[thread · len + e]: folds thread-private partial sums.
template <typename Out>
void sum_thread_parts(const std::vector<double>& part, int nt, int64_t len, Out* out) {
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < len; ++e) {
    double s = 0.0;
    for (int k = 0; k < nt; ++k) s += part[static_cast<size_t>(k) * len + e];
    out[e] = static_cast<Out>(s);
  }
}

template <typename T>
void tile_stats_impl(const T* t, int64_t r, int64_t c, int64_t row0, int64_t col0, double* sc,
                     double* row_abs, double* col_abs) {
  const int nt = thread_count();
  std::vector<double> col_part(static_cast<size_t>(nt) * c, 0.0);
  double bad = 0.0, sumsq = 0.0, maxabs = 0.0, diag = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : bad, sumsq, diag) reduction(max : maxabs)
  for (int64_t i = 0; i < r; ++i) {
    double* cp = col_part.data() + static_cast<size_t>(thread_id()) * c;
    const T* row = t + i * c;
    const int64_t diag_j = row0 + i - col0;  // local column on A's diagonal, if in range
    double rs = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      const double x = static_cast<double>(row[j]);
      if (!std::isfinite(x)) {
        bad += 1.0;
        continue;
      }
      const double ax = std::fabs(x);
      sumsq += x * x;
      maxabs = std::max(maxabs, ax);
      if (j == diag_j) {
        diag += x;
        continue;
      }
      rs += ax;
      cp[j] += ax;
    }
    row_abs[i] = rs;
  }
  sum_thread_parts(col_part, nt, c, col_abs);
  sc[0] = bad;
  sc[1] = sumsq;
  sc[2] = maxabs;
  sc[3] = diag;
}

// Row block I against every column block J: row sums, squares and maxima from A[I, J];
// asymmetry from A[I, J] − A[J, I]ᵀ for J ≥ I only (each unordered pair once).
template <typename T>
void square_stats_impl(const T* a, int64_t n, double* sc, double* row_abs) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  double bad = 0.0, asym = 0.0, sumsq = 0.0, maxabs = 0.0, trace = 0.0, maxdiag = 0.0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : bad, asym, sumsq, trace) \
    reduction(max : maxabs, maxdiag)
  for (int64_t bi = 0; bi < nb; ++bi) {
    const int64_t i0 = bi * kBlock, i1 = std::min(n, i0 + kBlock);
    for (int64_t i = i0; i < i1; ++i) row_abs[i] = 0.0;
    for (int64_t bj = 0; bj < nb; ++bj) {
      const int64_t j0 = bj * kBlock, j1 = std::min(n, j0 + kBlock);
      for (int64_t i = i0; i < i1; ++i) {
        const T* row = a + i * n;
        double rs = 0.0;
        for (int64_t j = j0; j < j1; ++j) {
          const double x = static_cast<double>(row[j]);
          if (!std::isfinite(x)) {
            bad += 1.0;
            continue;
          }
          const double ax = std::fabs(x);
          sumsq += x * x;
          maxabs = std::max(maxabs, ax);
          if (j == i) {
            trace += x;
            maxdiag = std::max(maxdiag, ax);
          } else {
            rs += ax;
          }
          if (bj > bi || (bj == bi && j > i)) {
            const double d = x - static_cast<double>(a[j * n + i]);
            if (std::isfinite(d)) asym += 2.0 * d * d;  // (i, j) and (j, i)
          }
        }
        row_abs[i] += rs;
      }
    }
  }
  sc[0] = bad;
  sc[1] = asym;
  sc[2] = sumsq;
  sc[3] = maxabs;
  sc[4] = trace;
  sc[5] = maxdiag;
}

// Upper-triangle product, two rows at a time (they share the loads of v and of the
// accumulator). Thread-private accumulators collect the mirrored (lower) part.
template <typename T>
void symv_upper_impl(const T* a, int64_t n, const T* v, int64_t m, T* y) {
  const int nt = thread_count();
  std::vector<double> part(static_cast<size_t>(nt) * n * m, 0.0);
  const int64_t pairs = (n + 1) / 2;
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t p = 0; p < pairs; ++p) {
    double* acc = part.data() + static_cast<size_t>(thread_id()) * n * m;
    const int64_t i = 2 * p;
    const T* r0 = a + i * n;
    const bool two = i + 1 < n;
    const T* r1 = two ? r0 + n : r0;
    for (int64_t q = 0; q < m; ++q) {
      const T* vq = v + q;
      double* aq = acc + q;
      const double v0 = static_cast<double>(vq[i * m]);
      const double v1 = two ? static_cast<double>(vq[(i + 1) * m]) : 0.0;
      double s0 = static_cast<double>(r0[i]) * v0, s1 = 0.0;
      if (two) {
        const double a01 = static_cast<double>(r0[i + 1]);
        s0 += a01 * v1;
        s1 = a01 * v0 + static_cast<double>(r1[i + 1]) * v1;
      }
#pragma omp simd reduction(+ : s0, s1)
      for (int64_t j = i + 2; j < n; ++j) {
        const double a0 = static_cast<double>(r0[j]);
        const double a1 = two ? static_cast<double>(r1[j]) : 0.0;
        const double vj = static_cast<double>(vq[j * m]);
        s0 += a0 * vj;
        s1 += a1 * vj;
        aq[j * m] += a0 * v0 + a1 * v1;
      }
      aq[i * m] += s0;
      if (two) aq[(i + 1) * m] += s1;
    }
  }
  sum_thread_parts(part, nt, n * m, y);
}

template <typename T>
double abs_quadratic_impl(const T* a, int64_t n, const double* w) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    const T* row = a + i * n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += std::fabs(static_cast<double>(row[j])) * w[j];
    total += w[i] * s;
  }
  return total;
}

}  // namespace

double abs_quadratic_cpu(const at::Tensor& a_in, const at::Tensor& v) {
  const at::Tensor a = a_in.contiguous();
  const at::Tensor w = v.to(at::kDouble).abs().contiguous();
  double result = 0.0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "abs_quadratic_cpu", [&] {
    result = abs_quadratic_impl<scalar_t>(a.data_ptr<scalar_t>(), a.size(0), w.data_ptr<double>());
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& tile_in,
                                                              int64_t row0, int64_t col0) {
  const at::Tensor tile = tile_in.contiguous();
  const int64_t r = tile.size(0), c = tile.size(1);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor scalars = at::zeros({4}, opts), row_abs = at::zeros({r}, opts),
             col_abs = at::zeros({c}, opts);
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "tile_stats_cpu", [&] {
    tile_stats_impl<scalar_t>(tile.data_ptr<scalar_t>(), r, c, row0, col0,
                              scalars.data_ptr<double>(), row_abs.data_ptr<double>(),
                              col_abs.data_ptr<double>());
  });
  return {scalars, row_abs, col_abs};
}

std::tuple<at::Tensor, at::Tensor> square_stats_cpu(const at::Tensor& a_in) {
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor scalars = at::zeros({6}, opts), row_abs = at::zeros({n}, opts);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "square_stats_cpu", [&] {
    square_stats_impl<scalar_t>(a.data_ptr<scalar_t>(), n, scalars.data_ptr<double>(),
                                row_abs.data_ptr<double>());
  });
  return {scalars, row_abs};
}

at::Tensor symv_upper_cpu(const at::Tensor& a_in, const at::Tensor& v_in) {
  const at::Tensor a = a_in.contiguous();
  const at::Tensor v = v_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t m = v.dim() == 1 ? 1 : v.size(1);
  at::Tensor y = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "symv_upper_cpu", [&] {
    symv_upper_impl<scalar_t>(a.data_ptr<scalar_t>(), n, v.data_ptr<scalar_t>(), m,
                              y.data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace lplr
