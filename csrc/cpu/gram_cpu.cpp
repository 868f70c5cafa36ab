// CPU face of the fused Gram accumulation. Per chunk of rows: the two Grams come from
// BLAS GEMMs (at::mm / at::bmm); one OpenMP pass then forms (A + beta) (.) G and adds it
// into `out`. Chunks bound the intermediates to about kChunkElems entries.
#include "../gram.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>

namespace lplr {
namespace {

constexpr int64_t kChunkElems = int64_t(1) << 22;

// Epilogue for one row chunk [r0, r0 + rows). Column j of the chunk's Grams is sample
// c0 + j. With `symmetric`, pairs below the diagonal are skipped and every computed
// off-diagonal pair is mirrored.
template <typename T>
void fused_epilogue(T* out, const T* sa, const T* sg, int64_t r0, int64_t rows, int64_t c0,
                    int64_t cols, const GramShape& s, T beta, bool symmetric) {
  const int64_t k = s.k, n2 = s.n2;
#pragma omp parallel for schedule(dynamic, 4) if (rows * cols * s.k >= (int64_t(1) << 14))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r0 + r;
    for (int64_t jj = 0; jj < cols; ++jj) {
      const int64_t j = c0 + jj;
      if (symmetric && j < i) continue;
      const bool mirror = symmetric && j != i;
      const T w = sa[r * cols + jj] + beta;
      switch (s.mode) {
        case GramMode::Trace: {
          const T v = w * sg[r * cols + jj];
          out[i * n2 + j] += v;
          if (mirror) out[j * n2 + i] += v;
          break;
        }
        case GramMode::Diagonal: {
          // sg is (k, rows, cols)
          for (int64_t c = 0; c < k; ++c) {
            const T v = w * sg[(c * rows + r) * cols + jj];
            out[(i * n2 + j) * k + c] += v;
            if (mirror) out[(j * n2 + i) * k + c] += v;
          }
          break;
        }
        case GramMode::Full: {
          // sg is (rows * k, cols * k). On a symmetric diagonal pair (j == i) only c2 >= c is
          // read and mirrored, so the k x k block is exactly symmetric whatever the GEMM's
          // rounding of sg[(i c), (i c2)] against sg[(i c2), (i c)].
          const int64_t ld = cols * k;
          const bool self_pair = symmetric && j == i;
          for (int64_t c = 0; c < k; ++c) {
            const T* sg_row = sg + (r * k + c) * ld + jj * k;
            T* o = out + ((i * n2 + j) * k + c) * k;
            if (self_pair) {
              for (int64_t c2 = c; c2 < k; ++c2) {
                const T v = w * sg_row[c2];
                o[c2] += v;
                if (c2 != c) out[((i * n2 + i) * k + c2) * k + c] += v;
              }
              continue;
            }
            for (int64_t c2 = 0; c2 < k; ++c2) o[c2] += w * sg_row[c2];
            if (mirror) {
              for (int64_t c2 = 0; c2 < k; ++c2) out[((j * n2 + i) * k + c2) * k + c] += w * sg_row[c2];
            }
          }
          break;
        }
      }
    }
  }
}

}  // namespace

void gram_accumulate_cpu(at::Tensor& out, const at::Tensor& a1_in, const at::Tensor& g1_in,
                         const at::Tensor& a2_in, const at::Tensor& g2_in, double beta,
                         const GramShape& s, bool symmetric) {
  if (s.n1 == 0 || s.n2 == 0) return;
  const at::Tensor a1 = a1_in.contiguous(), g1 = g1_in.contiguous();
  const at::Tensor a2 = symmetric ? a1 : a2_in.contiguous();
  const at::Tensor g2 = symmetric ? g1 : g2_in.contiguous();
  const int64_t k = s.k;
  // Entries of the Gram intermediates per row of the chunk: (k·n2)·k for full, n2 for trace,
  // k·n2 for diagonal (plus n2 for the activation Gram).
  const int64_t kk = s.mode == GramMode::Full ? k * k : (s.mode == GramMode::Trace ? 1 : k);
  const int64_t per_row = std::max<int64_t>(1, s.n2 * (kk + 1));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(s.n1, kChunkElems / per_row));

  const at::Tensor g2_flat_rows = g2.reshape({s.n2 * k, s.p});  // (n2 k, p)
  const at::Tensor g2_flat_cols = g2.reshape({s.n2, k * s.p});  // (n2, k p)

  for (int64_t r0 = 0; r0 < s.n1; r0 += chunk) {
    const int64_t rows = std::min(chunk, s.n1 - r0);
    // Symmetric: only columns j >= r0 can hold upper-triangle pairs of this chunk.
    const int64_t c0 = symmetric ? r0 : 0;
    const int64_t cols = s.n2 - c0;
    const at::Tensor a_rows = a1.narrow(0, r0, rows);
    const at::Tensor g_rows = g1.narrow(0, r0, rows);
    const at::Tensor sa = at::mm(a_rows, a2.narrow(0, c0, cols).t()).contiguous();
    at::Tensor sg;
    switch (s.mode) {
      case GramMode::Full:
        sg = at::mm(g_rows.reshape({rows * k, s.p}), g2_flat_rows.narrow(0, c0 * k, cols * k).t());
        break;
      case GramMode::Trace:
        sg = at::mm(g_rows.reshape({rows, k * s.p}), g2_flat_cols.narrow(0, c0, cols).t());
        break;
      case GramMode::Diagonal:
        sg = at::bmm(g_rows.transpose(0, 1), g2.narrow(0, c0, cols).permute({1, 2, 0}));
        break;
    }
    sg = sg.contiguous();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gram_accumulate_cpu", [&] {
      fused_epilogue<scalar_t>(out.data_ptr<scalar_t>(), sa.data_ptr<scalar_t>(),
                               sg.data_ptr<scalar_t>(), r0, rows, c0, cols, s,
                               static_cast<scalar_t>(beta), symmetric);
    });
  }
}

}  // namespace lplr
