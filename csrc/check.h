#pragma once
// The one tensor-argument check of every op, on every backend (TORCH_CHECK names the argument).
#include <ATen/ATen.h>

namespace saliency_fast {

// `t` (the argument `name`) must sit on the device of `first` (the argument `first_name`, the
// op's first tensor), be contiguous, and have `dtype`.
inline void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& first,
                         const char* first_name, at::ScalarType dtype) {
  TORCH_CHECK(t.device() == first.device(), name, " is on ", t.device(), " but ", first_name,
              " is on ", first.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
}

// `t` (the argument `name`, the op's first tensor) must be a (B, C, H, W) batch of images.
inline void check_images(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must have shape (B, C, H, W), got ", t.sizes());
}

// `t` (the argument `name`) must be float32 or float64, the dtypes the kernels are built for.
inline void check_float_or_double(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

// `t` (the argument `name`) must have the shape of `first` (the argument `first_name`).
inline void check_same_shape(const at::Tensor& t, const char* name, const at::Tensor& first,
                             const char* first_name) {
  TORCH_CHECK(t.sizes() == first.sizes(), name, " must have the shape of ", first_name, " ",
              first.sizes(), ", got ", t.sizes());
}

// `t` (the argument `name`) must be a per-pixel map (B, H, W) of the (B, C, H, W) `images`.
inline void check_pixel_map(const at::Tensor& t, const char* name, const at::Tensor& images) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == images.size(0) && t.size(1) == images.size(2) &&
                  t.size(2) == images.size(3),
              name, " must have shape (B, H, W) = (", images.size(0), ", ", images.size(2), ", ",
              images.size(3), "), got ", t.sizes());
}

// `t` (the argument `name`) must hold one value per image: shape (B,).
inline void check_per_image(const at::Tensor& t, const char* name, int64_t batch) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, name, " must have shape (B,) = (", batch,
              "), got ", t.sizes());
}

}  // namespace saliency_fast
