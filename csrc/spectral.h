// Streaming reductions over kernel tiles and a symmetric matrix-vector product reading one
// triangle: the memory-bound pieces of the eigenvalue bounds (spectrum/ in Python). Inputs are
// validated by the Python wrappers (lplr_fast/spectrum/native.py); these functions assume
// 2-D float32/float64 CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace lplr {

// One pass over a tile T = A[row0 : row0 + r, col0 : col0 + c] of a larger matrix A.
// Returns (scalars, row_abs, col_abs), all float64:
//   scalars = [number of non-finite entries, Σ t², max |t|, Σ of entries on A's diagonal]
//   row_abs[i] = Σ_j |t_ij| and col_abs[j] = Σ_i |t_ij|, both leaving out entries on A's
//   diagonal (global row == global column), i.e. the Gershgorin radii contributions.
std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& tile, int64_t row0,
                                                              int64_t col0);

// One blocked pass over a square matrix A (n, n). Returns (scalars, row_abs), float64:
//   scalars = [non-finite count, ‖A − Aᵀ‖_F², ‖A‖_F², max |a_ij|, tr A, max |a_ii|]
//   row_abs[i] = Σ_{j≠i} |a_ij|.
std::tuple<at::Tensor, at::Tensor> square_stats_cpu(const at::Tensor& a);

// y = S v with S the symmetric matrix whose upper triangle (diagonal included) is that of A;
// the strict lower triangle of A is never read. v: (n,) or (n, m); y has v's shape.
at::Tensor symv_upper_cpu(const at::Tensor& a, const at::Tensor& v);

// |v|ᵀ |A| |v| for a square A (n, n) and v (n,), in float64 without forming |A|: the
// rounding allowance of a computed Rayleigh quotient.
double abs_quadratic_cpu(const at::Tensor& a, const at::Tensor& v);

}  // namespace lplr
