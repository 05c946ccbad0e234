#pragma once
// Per-element rules of the masked_perturb and masked_random_fill ops (scaat.md), shared by
// csrc/cpu/masked_perturb.cpp and csrc/cuda/masked_perturb.cu, and the argument checks.
#include <cstdint>

#include <ATen/ATen.h>
#include "check.h"
#include "macros.h"

namespace saliency_fast {
namespace perturb {

// sign(g) with sign(0) = 0 and sign(NaN) = 0: a NaN gradient leaves the pixel where it is.
// Branch-free (gradient signs are random, so branches would mispredict half the time) and
// vectorisable.
template <typename T>
SF_HOST_DEVICE T sign_of(T g) {
  return T(g > T(0)) - T(g < T(0));
}

// Two selects that compile to max/min instructions; NaN stays NaN.
template <typename T>
SF_HOST_DEVICE T clamp_to(T v, T low, T high) {
  const T above_low = v < low ? low : v;
  return above_low > high ? high : above_low;
}

// One PGD step of one element: δ ← clamp(δ + (α/ε)·e·sign(g), −e, e), then x + δ is clamped
// into [low, high] and δ = clamp(x + δ) − x. `ratio` = α/ε (0 when ε = 0).
template <typename T>
SF_HOST_DEVICE T pgd_update(T x, T delta, T grad, T budget, T ratio, T low, T high) {
  const T stepped = delta + (ratio * budget) * sign_of(grad);
  const T boxed = clamp_to(stepped, -budget, budget);
  return clamp_to(x + boxed, low, high) - x;
}

// Saliency Guided Training's fill: a masked element becomes low + u·(high − low), u ∈ [0, 1),
// with low/high the image's minimum and maximum (NaN when the image holds a NaN, as torch.min
// and torch.max give them). `+ T(0)` turns −0 into +0: which of −0 and +0 a min/max reduction
// returns depends on its order, and the fill must not.
template <typename T>
SF_HOST_DEVICE T random_fill(T x, bool masked, T noise, T low, T high) {
  const T lo = low + T(0), hi = high + T(0);
  return masked ? lo + noise * (hi - lo) : x;
}

}  // namespace perturb

inline void check_masked_perturb(const at::Tensor& x, const at::Tensor& delta,
                                 const at::Tensor& grad, const at::Tensor& budget, double step_size,
                                 double epsilon, double low, double high) {
  check_images(x, "x");
  check_float_or_double(x, "x");
  check_tensor(x, "x", x, "x", x.scalar_type());
  check_tensor(delta, "delta", x, "x", x.scalar_type());
  check_tensor(grad, "grad", x, "x", x.scalar_type());
  check_tensor(budget, "budget", x, "x", x.scalar_type());
  check_same_shape(delta, "delta", x, "x");
  check_same_shape(grad, "grad", x, "x");
  check_pixel_map(budget, "budget", x);
  TORCH_CHECK(step_size >= 0, "step_size must be >= 0, got ", step_size);
  TORCH_CHECK(epsilon >= 0, "epsilon must be >= 0, got ", epsilon);
  TORCH_CHECK(low <= high, "low must be <= high, got low = ", low, ", high = ", high);
}

inline void check_masked_random_fill(const at::Tensor& x, const at::Tensor& mask,
                                     const at::Tensor& noise) {
  check_images(x, "x");
  check_float_or_double(x, "x");
  check_tensor(x, "x", x, "x", x.scalar_type());
  check_tensor(mask, "mask", x, "x", at::kBool);
  check_tensor(noise, "noise", x, "x", x.scalar_type());
  TORCH_CHECK(x.numel() > 0 || x.size(0) == 0, "x must not have empty images");
  check_pixel_map(mask, "mask", x);
  check_same_shape(noise, "noise", x, "x");
}

}  // namespace saliency_fast
