// Argument checks of the spectral reductions and their device-generic face (ATen
// expressions with the CPU kernels' semantics; the CUDA implementation of the ops).
#include "guards.h"
#include "message.h"
#include "spectral.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace lplr {
namespace {

void check_float(const at::Tensor& t, const char* name) {
  LPLR_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type(),
                   " (upcast with .double() first)");
}

at::TensorOptions f64_like(const at::Tensor& t) {
  return at::TensorOptions().dtype(at::kDouble).device(t.device());
}

// Entries of the (r, c) block at (row0, col0) that lie on the big matrix's diagonal.
at::Tensor diagonal_mask(int64_t r, int64_t c, int64_t row0, int64_t col0, const at::Tensor& like) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(like.device());
  return at::arange(row0, row0 + r, opts).unsqueeze(1) == at::arange(col0, col0 + c, opts).unsqueeze(0);
}

}  // namespace

void check_tile_args(const at::Tensor& tile, int64_t row0, int64_t col0) {
  LPLR_CHECK_VALUE(tile.dim() == 2, "tile must be 2-D (rows, cols), got shape ", tile.sizes());
  check_float(tile, "tile");
  LPLR_CHECK_VALUE(row0 >= 0 && col0 >= 0, "row0 and col0 must be >= 0, got ", row0, " and ",
                    col0);
  LPLR_CHECK_VALUE(row0 <= INT64_MAX - tile.size(0) && col0 <= INT64_MAX - tile.size(1),
                    "row0 + rows and col0 + cols must fit in int64, got row0=", row0,
                    ", col0=", col0);
  check_no_grad(tile, "tile_stats", "tile");
}

void check_square_stats_arg(const at::Tensor& a) {
  check_square_arg(a, "a");
  check_no_grad(a, "square_stats", "a");
}

void check_square_arg(const at::Tensor& a, const char* name) {
  LPLR_CHECK_VALUE(a.dim() == 2 && a.size(0) == a.size(1), name,
                    " must be a square 2-D matrix, got shape ", a.sizes());
  check_float(a, name);
}

void check_symv_args(const at::Tensor& a, const at::Tensor& v) {
  check_square_arg(a, "a");
  LPLR_CHECK_VALUE(v.dim() == 1 || v.dim() == 2, "v must be (n,) or (n, m), got shape ",
                    v.sizes());
  LPLR_CHECK_VALUE(v.size(0) == a.size(0), "v has ", v.size(0), " rows but a is ", a.size(0),
                    " x ", a.size(1));
  LPLR_CHECK_TYPE(v.scalar_type() == a.scalar_type(), "v has dtype ", v.scalar_type(),
                   " but a has dtype ", a.scalar_type(), "; they must match");
  LPLR_CHECK_VALUE(v.device() == a.device(), "v is on ", v.device(), " but a is on ",
                    a.device(), "; both must be on one device");
  check_no_grad(a, "symv_upper", "a");
  check_no_grad(v, "symv_upper", "v");
}

void check_abs_quadratic_args(const at::Tensor& a, const at::Tensor& v) {
  check_square_arg(a, "a");
  LPLR_CHECK_VALUE(v.dim() == 1 && v.size(0) == a.size(0), "v must be a vector of length ",
                    a.size(0), ", got shape ", v.sizes());
  check_float(v, "v");
  LPLR_CHECK_VALUE(v.device() == a.device(), "v is on ", v.device(), " but a is on ",
                    a.device(), "; both must be on one device");
  check_no_grad(a, "abs_quadratic", "a");
  check_no_grad(v, "abs_quadratic", "v");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tile_stats_generic(const at::Tensor& tile,
                                                                  int64_t row0, int64_t col0) {
  check_tile_args(tile, row0, col0);
  const at::Tensor t = tile.to(at::kDouble);
  const at::Tensor finite = at::isfinite(t);
  const at::Tensor z = at::where(finite, t, at::zeros({}, f64_like(t)));
  const at::Tensor on_diag = diagonal_mask(t.size(0), t.size(1), row0, col0, t);
  const at::Tensor off = z.abs().masked_fill(on_diag, 0.0);
  const at::Tensor max_abs = z.numel() ? z.abs().max() : at::zeros({}, f64_like(t));
  const at::Tensor scalars = at::stack({finite.logical_not().sum().to(at::kDouble),
                                        (z * z).sum(), max_abs, z.masked_fill(~on_diag, 0.0).sum()});
  return {scalars, off.sum(1), off.sum(0)};
}

std::tuple<at::Tensor, at::Tensor> square_stats_generic(const at::Tensor& a) {
  check_square_stats_arg(a);
  const at::Tensor t = a.to(at::kDouble);
  const at::Tensor finite = at::isfinite(t);
  const at::Tensor zero = at::zeros({}, f64_like(t));
  const at::Tensor z = at::where(finite, t, zero);
  const at::Tensor both = finite.logical_and(finite.t());
  const at::Tensor diff = at::where(both, t - t.t(), zero);  // overflow stays inf
  const at::Tensor diag = z.diagonal();
  const bool empty = t.numel() == 0;
  const at::Tensor scalars =
      at::stack({finite.logical_not().sum().to(at::kDouble), (diff * diff).sum(), (z * z).sum(),
                 empty ? zero : z.abs().max(), diag.sum(), empty ? zero : diag.abs().max()});
  return {scalars, z.abs().sum(1) - diag.abs()};
}

at::Tensor symv_upper_generic(const at::Tensor& a, const at::Tensor& v) {
  check_symv_args(a, v);
  return at::matmul(a.triu(), v) + at::matmul(a.triu(1).t(), v);
}

at::Tensor abs_quadratic_generic(const at::Tensor& a, const at::Tensor& v) {
  check_abs_quadratic_args(a, v);
  const at::Tensor w = v.to(at::kDouble).abs();
  return at::dot(w, at::mv(a.to(at::kDouble).abs(), w));
}

}  // namespace lplr
