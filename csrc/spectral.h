// Streaming reductions over kernel tiles and a symmetric matrix-vector product reading one
// triangle: the memory-bound pieces of the eigenvalue bounds (spectrum/ in Python).
//
// Two faces with the same semantics: the CPU kernels (OpenMP, one pass) and device-generic
// ATen expressions (used on CUDA). Every reduction is accumulated in float64 whatever the
// input dtype, in a fixed order that depends only on the shapes (never on thread timing or
// the thread count), so repeated calls are bitwise identical.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace lplr {

// Argument checks shared by both faces (throw c10::ValueError / c10::TypeError).
void check_tile_args(const at::Tensor& tile, int64_t row0, int64_t col0);
void check_square_arg(const at::Tensor& a, const char* name);
void check_square_stats_arg(const at::Tensor& a);
void check_symv_args(const at::Tensor& a, const at::Tensor& v);
void check_abs_quadratic_args(const at::Tensor& a, const at::Tensor& v);

// One pass over a tile T = A[row0 : row0 + r, col0 : col0 + c] of a larger matrix A.
// Returns (scalars, row_abs, col_abs), all float64 on T's device:
//   scalars = [number of non-finite entries, Σ t², max |t|, Σ of entries on A's diagonal]
//   row_abs[i] = Σ_j |t_ij| and col_abs[j] = Σ_i |t_ij|, both leaving out entries on A's
//   diagonal (global row == global column), i.e. the Gershgorin radii contributions.
// Non-finite entries are counted and otherwise left out of every sum.
std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& tile, int64_t row0,
                                                              int64_t col0);
std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_generic(const at::Tensor& tile,
                                                                  int64_t row0, int64_t col0);

// One pass over a square matrix A (n, n). Returns (scalars, row_abs), float64:
//   scalars = [non-finite count, ‖A − Aᵀ‖_F², ‖A‖_F², max |a_ij|, tr A, max |a_ii|]
//   row_abs[i] = Σ_{j≠i} |a_ij|.
// Pairs with a non-finite entry are left out of ‖A − Aᵀ‖ (the count reports them); a
// difference of two finite entries that overflows makes ‖A − Aᵀ‖_F² = +inf, never smaller.
std::tuple<at::Tensor, at::Tensor> square_stats_cpu(const at::Tensor& a);
std::tuple<at::Tensor, at::Tensor> square_stats_generic(const at::Tensor& a);

// y = S v with S the symmetric matrix whose upper triangle (diagonal included) is that of A;
// the strict lower triangle of A is never read. v: (n,) or (n, m); y has v's shape and dtype.
at::Tensor symv_upper_cpu(const at::Tensor& a, const at::Tensor& v);
at::Tensor symv_upper_generic(const at::Tensor& a, const at::Tensor& v);

// |v|ᵀ |A| |v| for a square A (n, n) and v (n,), as a float64 scalar tensor, without
// forming |A| on CPU: the rounding allowance of a computed Rayleigh quotient.
at::Tensor abs_quadratic_cpu(const at::Tensor& a, const at::Tensor& v);
at::Tensor abs_quadratic_generic(const at::Tensor& a, const at::Tensor& v);

}  // namespace lplr
