#pragma once
// Argument checks shared by the CPU and CUDA entry points (TORCH_CHECK names the argument).
#include <ATen/ATen.h>

namespace saliency_fast {

inline void check_tensor(const at::Tensor& t, const char* name, const at::Device& device,
                         c10::optional<at::ScalarType> dtype = c10::nullopt) {
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), " but the point is on ", device);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  if (dtype) {
    TORCH_CHECK(t.scalar_type() == *dtype, name, " must have dtype ", *dtype, ", got ",
                t.scalar_type());
  }
}

}  // namespace saliency_fast
