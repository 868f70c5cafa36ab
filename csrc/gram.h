// Fused per-layer NTK Gram accumulation: declarations shared by the bindings,
// the CPU kernel and the CUDA dispatcher. ATen-only headers (fast to compile).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace lplr {

// Bumped whenever a kernel's signature or semantics change; the Python layer refuses a
// compiled module whose number differs (a stale build).
constexpr int64_t kKernelApiVersion = 2;

// Argument checks report instead of throwing: the bindings return the report and the Python
// wrapper raises ValueError / TypeError. (Introduced while chasing a segfault on the torch 2.11
// CUDA image whose actual cause was std::ostream integer formatting, see msg() below; whether
// throwing is safe there was not re-tested.)
enum class ErrorKind : int { None = 0, Value = 1, Type = 2 };

// Messages are assembled without std::ostream: on the torch 2.11 CUDA image an ostringstream
// formatting an integer inside this module segfaulted (likely two libstdc++ locale states), while
// std::to_string and string concatenation are safe.
inline void msg_append(std::string& s, const char* v) { s += v; }
inline void msg_append(std::string& s, const std::string& v) { s += v; }
inline void msg_append(std::string& s, int64_t v) { s += std::to_string(v); }
inline void msg_append(std::string& s, int v) { s += std::to_string(v); }
inline void msg_append(std::string& s, double v) { s += std::to_string(v); }
inline void msg_append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void msg_append(std::string& s, const c10::Device& v) { s += v.str(); }
inline void msg_append(std::string& s, c10::IntArrayRef v) {
  s += "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += ")";
}
template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_append(s, args), ...);
  return s;
}

#define LPLR_CHECK_VALUE(cond, ...) \
  do {                              \
    if (!(cond)) return {::lplr::ErrorKind::Value, ::lplr::msg(__VA_ARGS__), {}}; \
  } while (0)
#define LPLR_CHECK_TYPE(cond, ...) \
  do {                             \
    if (!(cond)) return {::lplr::ErrorKind::Type, ::lplr::msg(__VA_ARGS__), {}}; \
  } while (0)

enum class GramMode : int64_t { Full = 0, Trace = 1, Diagonal = 2 };

// Shapes of one accumulation call, validated.
struct GramShape {
  int64_t n1 = 0, n2 = 0, d = 0, k = 0, p = 0;
  GramMode mode = GramMode::Full;
};

struct GramCheck {
  ErrorKind kind = ErrorKind::None;
  std::string message;
  GramShape shape;
  bool ok() const { return kind == ErrorKind::None; }
};

// Validates a1 (n1, d), g1 (n1, k, p), a2 (n2, d), g2 (n2, k, p) and out
// ((n1, n2, k, k) | (n1, n2) | (n1, n2, k) by mode): ranks, matching sizes, one floating
// dtype (float32/float64), one device, finite beta and, when check_finite, finite inputs.
// A failed check names the offending argument; it becomes ValueError/TypeError in Python.
GramCheck check_gram_args(const at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta, int64_t mode,
                          bool check_finite);

// out += (a1 a2^T + beta) (.) (g1 g2^T) in the layout of `mode`. When `symmetric`, a2/g2 are
// a1/g1 and only the upper triangle of sample pairs is computed, then mirrored.
void gram_accumulate_cpu(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                         const at::Tensor& a2, const at::Tensor& g2, double beta,
                         const GramShape& shape, bool symmetric);

#ifdef LPLR_WITH_CUDA
void gram_accumulate_cuda(at::Tensor& out, const at::Tensor& a1, const at::Tensor& g1,
                          const at::Tensor& a2, const at::Tensor& g2, double beta,
                          const GramShape& shape, bool symmetric);
#endif

}  // namespace lplr
