// Guards shared by the operators' argument checks: no autograd through the kernels (they
// have no derivative) and no memory shared between an in-place output and an input.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <cstdlib>
#include <utility>

#include "message.h"

namespace lplr {

// Refuses `t` when autograd would record it: the operators return values without a graph,
// so a silently detached result would drop gradients.
inline void check_no_grad(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && t.defined() && t.requires_grad()),
              ::lplr::msg("lplr::", op, ": ", name,
                          " requires grad, but lplr's kernels have no derivative; pass ", name,
                          ".detach() or call it under torch.no_grad()"));
}

// Byte range [first, last) that a strided tensor can touch (strides are >= 0 in torch).
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  const auto first = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * std::abs(t.stride(d));
  return {first, first + static_cast<uintptr_t>(extent) * t.element_size()};
}

// Refuses an input that shares memory with the in-place output `out`: the kernels read
// inputs after they started writing `out`, so aliasing gives wrong numbers. Address ranges
// are compared whatever the storages (two storages can wrap one buffer, e.g. two
// torch.from_numpy calls on one array); `out` is contiguous, so its range holds only its
// own elements and an intersecting range is a shared element (or a strided input's gap).
inline void check_no_overlap(const at::Tensor& out, const at::Tensor& t, const char* name) {
  if (out.numel() == 0 || t.numel() == 0 || out.device() != t.device()) return;
  const auto [out_first, out_last] = byte_span(out);
  const auto [first, last] = byte_span(t);
  LPLR_CHECK_VALUE(last <= out_first || out_last <= first, "out shares memory with ", name,
                    "; the kernel writes out while it reads ", name, ", so pass ", name,
                    ".clone() (or a separate out tensor)");
}

}  // namespace lplr
