// Error messages for argument checks, assembled without iostreams, and the check macros that
// throw them (c10::ValueError / c10::TypeError → Python ValueError / TypeError).
//
// Why not TORCH_CHECK_VALUE(cond, "a", n, ...) directly: c10::str formats several arguments
// through a std::ostringstream instantiated in *this* library. Where the extension is built
// by a system g++ other than the toolchain torch was built with (the torch 2.11 CUDA image:
// Ubuntu g++ 13 against a gcc-toolset build that exports parts of its own C++ runtime from
// libc10), stream constructors and locale facets bind to two different runtimes and the
// formatting crashes the process. One pre-built std::string passes through c10::str
// untouched, so only std::to_string and string concatenation run here.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

namespace lplr {

inline void msg_append(std::string& s, const char* v) { s += v; }
inline void msg_append(std::string& s, const std::string& v) { s += v; }
inline void msg_append(std::string& s, int64_t v) { s += std::to_string(v); }
inline void msg_append(std::string& s, int v) { s += std::to_string(v); }
inline void msg_append(std::string& s, double v) { s += std::to_string(v); }
inline void msg_append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void msg_append(std::string& s, const c10::Device& v) {
  s += c10::DeviceTypeName(v.type(), /*lower_case=*/true);
  if (v.has_index()) s += ":" + std::to_string(v.index());
}
inline void msg_append(std::string& s, c10::IntArrayRef v) {
  s += "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += v.size() == 1 ? ",)" : ")";
}

template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_append(s, args), ...);
  return s;
}

}  // namespace lplr

#define LPLR_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::lplr::msg(__VA_ARGS__))
#define LPLR_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::lplr::msg(__VA_ARGS__))
