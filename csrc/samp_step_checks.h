#pragma once
#include <cmath>

#include "check.h"

namespace saliency_fast {

// Validates the samp_step arguments; identical for every backend.
inline void check_samp_step(const at::Tensor& point, const at::Tensor& end, const at::Tensor& grad,
                            const at::Tensor& grad_avg, const at::Tensor& attribution,
                            const at::Tensor& active, const at::Tensor& active_count, const at::Tensor& step_count,
                            const at::Tensor& rows, const at::Tensor& bound, int64_t k,
                            bool exact_ties, double tie_tolerance) {
  check_images(point, "point");
  check_float_or_double(point, "point");
  TORCH_CHECK(k >= 1, "k (pixels per step) must be >= 1, got ", k);
  TORCH_CHECK(tie_tolerance >= 0 && std::isfinite(tie_tolerance),
              "tie_tolerance must be a finite number >= 0, got ", tie_tolerance);
  TORCH_CHECK(!(exact_ties && tie_tolerance > 0),
              "tie_tolerance > 0 widens the ties that move; it cannot be combined with exact_ties");
  const auto dtype = point.scalar_type();
  check_tensor(point, "point", point, "point", dtype);
  check_tensor(end, "end", point, "point", dtype);
  check_tensor(grad, "grad", point, "point", dtype);
  check_tensor(grad_avg, "grad_avg", point, "point", dtype);
  check_tensor(attribution, "attribution", point, "point", dtype);
  check_tensor(active, "active", point, "point", at::kBool);
  check_tensor(active_count, "active_count", point, "point", at::kLong);
  check_tensor(step_count, "step_count", point, "point", at::kLong);
  check_tensor(rows, "rows", point, "point", at::kLong);
  check_tensor(bound, "bound", point, "point", dtype);
  const int64_t B = point.size(0), C = point.size(1), H = point.size(2), W = point.size(3);
  check_same_shape(end, "end", point, "point");
  check_same_shape(grad_avg, "grad_avg", point, "point");
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) <= B, "rows must be a 1-D index of at most B entries");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rows.size(0) && grad.size(1) == C &&
                  grad.size(2) == H && grad.size(3) == W,
              "grad must have shape (len(rows), C, H, W) = (", rows.size(0), ", ", C, ", ", H, ", ",
              W, "), got ", grad.sizes());
  check_pixel_map(attribution, "attribution", point);
  check_pixel_map(active, "active", point);
  check_per_image(active_count, "active_count", B);
  check_per_image(step_count, "step_count", B);
  check_per_image(bound, "bound", B);
}

}  // namespace saliency_fast
