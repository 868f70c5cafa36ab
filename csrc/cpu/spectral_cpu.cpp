// CPU face of the spectral reductions (see spectral.h). OpenMP over fixed groups of rows:
// every group owns its partial sums, and groups are folded in index order, so the result
// depends on the shapes alone (not on the thread count or scheduling).
#include "../spectral.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lplr {
namespace {

constexpr int64_t kBlock = 64;
constexpr int64_t kMaxGroups = 64;
constexpr int64_t kSymvBudget = int64_t(1) << 24;  // doubles of per-group symv accumulators
// Below this many entries a pass runs on one thread: waking a team costs more than the pass,
// and on a loaded machine a parallel region can wait milliseconds for a descheduled thread.
// (Results do not depend on it: the groups and their folding order are fixed either way.)
constexpr int64_t kParallelMin = int64_t(1) << 16;

// A fixed partition of [0, len) into at most kMaxGroups runs of at least kBlock items.
struct Groups {
  int64_t size = 0, count = 0;
  int64_t begin(int64_t g) const { return g * size; }
  int64_t end(int64_t g, int64_t len) const { return std::min(len, (g + 1) * size); }
};

Groups fixed_groups(int64_t len) {
  Groups gr;
  gr.size = std::max(kBlock, (len + kMaxGroups - 1) / kMaxGroups);
  gr.count = len == 0 ? 0 : (len + gr.size - 1) / gr.size;
  return gr;
}

// out[e] = Σ over groups g (in order) of part[g · len + e].
template <typename Out>
void fold_groups(const std::vector<double>& part, int64_t groups, int64_t len, Out* out) {
#pragma omp parallel for schedule(static) if (groups * len >= kParallelMin)
  for (int64_t e = 0; e < len; ++e) {
    double s = 0.0;
    for (int64_t g = 0; g < groups; ++g) s += part[static_cast<size_t>(g * len + e)];
    out[e] = static_cast<Out>(s);
  }
}

// Per-group partial scalars, folded in group order: sums for the first `n_sums` slots,
// maxima for the rest.
void fold_scalars(const std::vector<double>& part, int64_t groups, int64_t width,
                  int64_t n_sums, double* out) {
  for (int64_t e = 0; e < width; ++e) out[e] = 0.0;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t e = 0; e < width; ++e) {
      const double v = part[static_cast<size_t>(g * width + e)];
      out[e] = e < n_sums ? out[e] + v : std::max(out[e], v);
    }
}

// scalars per group: [non-finite, Σ t², diagonal sum | max |t|]
template <typename T>
void tile_stats_impl(const T* t, int64_t r, int64_t c, int64_t row0, int64_t col0, double* sc,
                     double* row_abs, double* col_abs) {
  const Groups gr = fixed_groups(r);
  std::vector<double> scal(static_cast<size_t>(gr.count * 4), 0.0);
  std::vector<double> col_part(static_cast<size_t>(gr.count * c), 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (r * c >= kParallelMin)
  for (int64_t g = 0; g < gr.count; ++g) {
    double* cp = col_part.data() + g * c;
    double bad = 0.0, sumsq = 0.0, diag = 0.0, maxabs = 0.0;
    for (int64_t i = gr.begin(g); i < gr.end(g, r); ++i) {
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
    double* s = scal.data() + g * 4;
    s[0] = bad, s[1] = sumsq, s[2] = diag, s[3] = maxabs;
  }
  double folded[4];
  fold_scalars(scal, gr.count, 4, 3, folded);
  fold_groups(col_part, gr.count, c, col_abs);
  sc[0] = folded[0], sc[1] = folded[1], sc[2] = folded[3], sc[3] = folded[2];
}

// Row block I against every column block J: row sums, squares and maxima from A[I, J];
// asymmetry from A[I, J] − A[J, I]ᵀ for J ≥ I only (each unordered pair once).
// scalars per block: [non-finite, ‖A − Aᵀ‖², Σ a², tr | max |a|, max |a_ii|]
template <typename T>
void square_stats_impl(const T* a, int64_t n, double* sc, double* row_abs) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> scal(static_cast<size_t>(nb * 6), 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (n * n >= kParallelMin)
  for (int64_t bi = 0; bi < nb; ++bi) {
    double bad = 0.0, asym = 0.0, sumsq = 0.0, trace = 0.0, maxabs = 0.0, maxdiag = 0.0;
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
            const double y = static_cast<double>(a[j * n + i]);
            const double d = x - y;  // may overflow to inf: then so does the sum, honestly
            if (std::isfinite(y)) asym += 2.0 * d * d;  // (i, j) and (j, i)
          }
        }
        row_abs[i] += rs;
      }
    }
    double* s = scal.data() + bi * 6;
    s[0] = bad, s[1] = asym, s[2] = sumsq, s[3] = trace, s[4] = maxabs, s[5] = maxdiag;
  }
  double folded[6];
  fold_scalars(scal, nb, 6, 4, folded);
  sc[0] = folded[0], sc[1] = folded[1], sc[2] = folded[2], sc[3] = folded[4];
  sc[4] = folded[3], sc[5] = folded[5];
}

// Boundaries (in row pairs) of `groups` runs of about equal work: pair p costs n − 2p.
std::vector<int64_t> balanced_pair_bounds(int64_t n, int64_t pairs, int64_t groups) {
  double total = 0.0;
  for (int64_t p = 0; p < pairs; ++p) total += static_cast<double>(n - 2 * p);
  std::vector<int64_t> bounds{0};
  double acc = 0.0;
  for (int64_t p = 0; p < pairs && static_cast<int64_t>(bounds.size()) < groups; ++p) {
    acc += static_cast<double>(n - 2 * p);
    if (acc >= total * static_cast<double>(bounds.size()) / static_cast<double>(groups))
      bounds.push_back(p + 1);
  }
  if (bounds.back() != pairs) bounds.push_back(pairs);
  return bounds;
}

// Rows i = 2p and 2p + 1 of the upper-triangle product: they share the loads of v and of
// the accumulator `acc` (n, m), which collects the mirrored (lower) part.
template <typename T>
void symv_row_pair(const T* a, int64_t n, const T* v, int64_t m, int64_t p, double* acc) {
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

template <typename T>
void symv_upper_impl(const T* a, int64_t n, const T* v, int64_t m, T* y) {
  const int64_t pairs = (n + 1) / 2;
  const int64_t want = std::max<int64_t>(1, std::min(kMaxGroups, kSymvBudget / std::max<int64_t>(1, n * m)));
  const std::vector<int64_t> bounds = balanced_pair_bounds(n, pairs, std::min(want, pairs));
  const int64_t groups = static_cast<int64_t>(bounds.size()) - 1;
  std::vector<double> part(static_cast<size_t>(groups * n * m), 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (n * n * m >= 2 * kParallelMin)
  for (int64_t g = 0; g < groups; ++g) {
    double* acc = part.data() + g * n * m;
    for (int64_t p = bounds[g]; p < bounds[g + 1]; ++p) symv_row_pair(a, n, v, m, p, acc);
  }
  fold_groups(part, groups, n * m, y);
}

template <typename T>
double abs_quadratic_impl(const T* a, int64_t n, const double* w) {
  std::vector<double> rows(static_cast<size_t>(n), 0.0);
#pragma omp parallel for schedule(static) if (n * n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T* row = a + i * n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += std::fabs(static_cast<double>(row[j])) * w[j];
    rows[i] = w[i] * s;
  }
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += rows[i];
  return total;
}

}  // namespace

at::Tensor abs_quadratic_cpu(const at::Tensor& a_in, const at::Tensor& v) {
  check_abs_quadratic_args(a_in, v);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor w = v.to(at::kDouble).abs().contiguous();
  double result = 0.0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "abs_quadratic_cpu", [&] {
    result = abs_quadratic_impl<scalar_t>(a.data_ptr<scalar_t>(), a.size(0), w.data_ptr<double>());
  });
  return at::scalar_tensor(result, at::TensorOptions().dtype(at::kDouble));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& tile_in,
                                                              int64_t row0, int64_t col0) {
  check_tile_args(tile_in, row0, col0);
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
  check_square_stats_arg(a_in);
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
  check_symv_args(a_in, v_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor v = v_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t m = v.dim() == 1 ? 1 : v.size(1);
  at::Tensor y = at::empty_like(v);
  if (n == 0 || m == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "symv_upper_cpu", [&] {
    symv_upper_impl<scalar_t>(a.data_ptr<scalar_t>(), n, v.data_ptr<scalar_t>(), m,
                              y.data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace lplr
