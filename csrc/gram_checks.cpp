// Argument checks of the Gram accumulation; failures throw c10::ValueError / c10::TypeError,
// which the dispatcher turns into Python ValueError / TypeError.
#include "gram.h"
#include "guards.h"
#include "message.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <utility>

namespace lplr {
namespace {

void check_float_dtype(const at::Tensor& t, const char* name, at::ScalarType want) {
  LPLR_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type(),
                   " (convert with .float() or .double())");
  LPLR_CHECK_TYPE(t.scalar_type() == want, name, " has dtype ", t.scalar_type(),
                   " but a1 has dtype ", want, "; all arguments must share one dtype");
}

void check_all_finite(const at::Tensor& t, const char* name) {
  LPLR_CHECK_VALUE(at::isfinite(t).all().item<bool>(), name,
                    " contains NaN or Inf; they would poison every entry of the kernel");
}

void check_out_shape(const at::Tensor& out, const GramShape& s) {
  switch (s.mode) {
    case GramMode::Full:
      LPLR_CHECK_VALUE(out.dim() == 4 && out.size(0) == s.n1 && out.size(1) == s.n2 &&
                            out.size(2) == s.k && out.size(3) == s.k,
                        "out must have shape (n1, n2, k, k) = (", s.n1, ", ", s.n2, ", ", s.k,
                        ", ", s.k, ") for compute='full', got ", out.sizes());
      break;
    case GramMode::Trace:
      LPLR_CHECK_VALUE(out.dim() == 2 && out.size(0) == s.n1 && out.size(1) == s.n2,
                        "out must have shape (n1, n2) = (", s.n1, ", ", s.n2,
                        ") for compute='trace', got ", out.sizes());
      break;
    case GramMode::Diagonal:
      LPLR_CHECK_VALUE(out.dim() == 3 && out.size(0) == s.n1 && out.size(1) == s.n2 &&
                            out.size(2) == s.k,
                        "out must have shape (n1, n2, k) = (", s.n1, ", ", s.n2, ", ", s.k,
                        ") for compute='diagonal', got ", out.sizes());
      break;
  }
}

}  // namespace

GramShape check_gram_args(const at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta, int64_t mode,
                          bool check_finite) {
  LPLR_CHECK_VALUE(mode >= 0 && mode <= 2,
                    "mode must be 0 (full), 1 (trace) or 2 (diagonal), got ", mode);
  LPLR_CHECK_VALUE(a1.dim() == 2, "a1 must be 2-D (n1, d_in), got shape ", a1.sizes());
  LPLR_CHECK_VALUE(a2.dim() == 2, "a2 must be 2-D (n2, d_in), got shape ", a2.sizes());
  LPLR_CHECK_VALUE(g1.dim() == 3, "g1 must be 3-D (n1, k, d_out), got shape ", g1.sizes());
  LPLR_CHECK_VALUE(g2.dim() == 3, "g2 must be 3-D (n2, k, d_out), got shape ", g2.sizes());

  const auto want = a1.scalar_type();
  check_float_dtype(a1, "a1", want);
  check_float_dtype(g1, "g1", want);
  check_float_dtype(a2, "a2", want);
  check_float_dtype(g2, "g2", want);
  check_float_dtype(out, "out", want);

  const auto dev = a1.device();
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{g1, "g1"},
                                {a2, "a2"}, {g2, "g2"}, {out, "out"}}) {
    LPLR_CHECK_VALUE(t.device() == dev, name, " is on ", t.device(), " but a1 is on ", dev,
                      "; all arguments must be on one device");
  }

  GramShape s{a1.size(0), a2.size(0), a1.size(1), g1.size(1), g1.size(2),
              static_cast<GramMode>(mode)};
  LPLR_CHECK_VALUE(g1.size(0) == s.n1, "g1 has ", g1.size(0), " samples but a1 has ", s.n1);
  LPLR_CHECK_VALUE(g2.size(0) == s.n2, "g2 has ", g2.size(0), " samples but a2 has ", s.n2);
  LPLR_CHECK_VALUE(a2.size(1) == s.d, "a2 has d_in=", a2.size(1), " but a1 has d_in=", s.d);
  LPLR_CHECK_VALUE(g2.size(1) == s.k, "g2 has k=", g2.size(1), " outputs but g1 has k=", s.k);
  LPLR_CHECK_VALUE(g2.size(2) == s.p, "g2 has d_out=", g2.size(2), " but g1 has d_out=", s.p);
  check_out_shape(out, s);
  LPLR_CHECK_VALUE(out.is_contiguous(), "out must be contiguous (it is written in place)");
  LPLR_CHECK_VALUE(std::isfinite(beta), "beta must be finite, got ", beta);
  if (check_finite) {
    check_all_finite(a1, "a1");
    check_all_finite(g1, "g1");
    check_all_finite(a2, "a2");
    check_all_finite(g2, "g2");
  }
  return s;
}

GramCall check_gram_call(const at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                         const std::optional<at::Tensor>& a2, const std::optional<at::Tensor>& g2,
                         double beta, int64_t mode, bool check_finite, int64_t route) {
  LPLR_CHECK_VALUE(a2.has_value() == g2.has_value(),
                    "a2 and g2 must both be given (cross kernel) or both be None (symmetric)");
  LPLR_CHECK_VALUE(route >= 0 && route <= 2,
                    "route must be 0 (auto), 1 (gemm) or 2 (fused), got ", route);
  const bool symmetric = !a2.has_value();
  const at::Tensor& a2_ref = symmetric ? a1 : *a2;
  const at::Tensor& g2_ref = symmetric ? g1 : *g2;
  const GramShape s = check_gram_args(out, a1, g1, a2_ref, g2_ref, beta, mode, check_finite);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{out, "out"},
                                {a1, "a1"}, {g1, "g1"}, {a2_ref, "a2"}, {g2_ref, "g2"}}) {
    check_no_grad(t, "gram_accumulate_", name);
    if (name[0] != 'o') check_no_overlap(out, t, name);
  }
  return {a2_ref, g2_ref, symmetric, s, static_cast<GramRoute>(route)};
}

}  // namespace lplr
