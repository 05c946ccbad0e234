#pragma once
// Per-element rule of the perturbation_curve op. The CUDA kernel applies it as written; the CPU
// kernel applies the equivalent int32 comparison of csrc/cpu/perturbation_curve.cpp (levels),
// which vectorises, and the tests check it against this rule for any ranks and counts.
//
// A deletion/insertion curve point replaces the `count` highest-ranked pixels of the start
// image with the finish image. A pixel's rank is its position in the descending (stable)
// order of the attribution, so "already replaced" is one comparison: rank < count.
#include <cstdint>

#include <ATen/ATen.h>
#include "check.h"
#include "macros.h"

namespace saliency_fast {
namespace curve {

// Whether a pixel of rank `rank` is already replaced once `count` ranked pixels are.
SF_HOST_DEVICE bool is_replaced(int64_t rank, int64_t count) { return rank < count; }

template <typename T>
SF_HOST_DEVICE T curve_value(T start, T finish, int64_t rank, int64_t count) {
  return is_replaced(rank, count) ? finish : start;
}

}  // namespace curve

// Validates the perturbation_curve arguments; identical for every backend.
inline void check_perturbation_curve(const at::Tensor& start, const at::Tensor& finish,
                                     const at::Tensor& ranks, const at::Tensor& counts) {
  check_images(start, "start");
  TORCH_CHECK(at::isFloatingType(start.scalar_type()),
              "start must be a floating tensor, got ", start.scalar_type());
  check_tensor(start, "start", start, "start", start.scalar_type());
  check_tensor(finish, "finish", start, "start", start.scalar_type());
  check_tensor(ranks, "ranks", start, "start", at::kLong);
  check_tensor(counts, "counts", start, "start", at::kLong);
  check_same_shape(finish, "finish", start, "start");
  check_pixel_map(ranks, "ranks", start);
  TORCH_CHECK(counts.dim() == 1, "counts must be a 1-D tensor of step sizes, got shape ",
              counts.sizes());
}

}  // namespace saliency_fast
