#pragma once
// Per-pixel rules of the saliency_budget op (scaat.md), shared by csrc/cpu/saliency_budget.cpp
// and csrc/cuda/saliency_budget.cu, and the argument checks of both backends.
//
// A budget map e (B, H, W) says how far the attack may move each pixel. It is computed per
// image from a non-negative saliency map s (B, H, W):
//   uniform : e = ε everywhere
//   topk    : e = ε where s <= v, v the m-th smallest value of the image, m = floor(k·H·W)
//   mass    : e = ε where s <= v*, v* the largest value with Σ_{s_j <= v*} s_j <= ρ·Σ_j s_j
//   inverse : e = ε·(1 − r)^γ, r = #{j : s_j < s_i} / (H·W − 1)  (ties share the lower rank)
// Every region is defined by a value threshold, so ties are all in or all out and the result
// does not depend on the order pixels are visited in. Pixels are ordered by order_key
// (ordered_bits.h): NaN ranks last, −0 equals +0.
#include <cmath>
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include "check.h"
#include "macros.h"
#include "ordered_bits.h"

namespace saliency_fast {
namespace budget {

enum class Mode : int { kUniform = 0, kTopk = 1, kMass = 2, kInverse = 3 };

// The budget of a pixel in a thresholded mode ("topk", "mass"): ε inside the region, else 0.
template <typename T>
SF_HOST_DEVICE T threshold_budget(T key, T threshold, bool any_selected, T epsilon) {
  return (any_selected && key <= threshold) ? epsilon : T(0);
}

// "inverse": ε·(1 − rank)^γ, with rank = position / (n − 1) ∈ [0, 1] (0 for a 1-pixel image).
// Computed in double on every backend and for every dtype, then rounded once to T: the same
// operations give the same bits, except pow (γ != 1), where the host's and the device's double
// pow may differ by a few ulp (README, "CPU/CUDA parity").
template <typename T>
SF_HOST_DEVICE T inverse_budget(int64_t position, int64_t n, double epsilon, double gamma) {
  const double rank = n > 1 ? static_cast<double>(position) / static_cast<double>(n - 1) : 0.0;
  const double keep = 1.0 - rank;
  return static_cast<T>(gamma == 1.0 ? epsilon * keep : epsilon * ::pow(keep, gamma));
}

// "mass" with rho >= 1 is every pixel, on every backend: the region's own summation order could
// otherwise push the last value's cumulative mass past the total by rounding and drop it.
inline bool is_everything(Mode mode, double rho) { return mode == Mode::kUniform || (mode == Mode::kMass && rho >= 1.0); }

// How many pixels "topk" selects: floor(k·n), computed in double by both backends.
inline int64_t topk_count(double k, int64_t n) {
  const int64_t m = static_cast<int64_t>(std::floor(k * static_cast<double>(n)));
  return m < 0 ? 0 : (m > n ? n : m);
}

}  // namespace budget

inline budget::Mode parse_budget_mode(c10::string_view mode) {
  if (mode == "uniform") return budget::Mode::kUniform;
  if (mode == "topk") return budget::Mode::kTopk;
  if (mode == "mass") return budget::Mode::kMass;
  if (mode == "inverse") return budget::Mode::kInverse;
  TORCH_CHECK(false, "mode must be one of 'mass', 'topk', 'inverse', 'uniform', got '",
              std::string(mode), "'");
  return budget::Mode::kUniform;
}

inline void check_saliency_budget(const at::Tensor& saliency, double epsilon, double rho, double k,
                                  double gamma) {
  TORCH_CHECK(saliency.dim() == 3, "saliency must have shape (B, H, W), got ", saliency.sizes());
  check_float_or_double(saliency, "saliency");
  check_tensor(saliency, "saliency", saliency, "saliency", saliency.scalar_type());
  TORCH_CHECK(epsilon >= 0, "epsilon must be >= 0, got ", epsilon);
  TORCH_CHECK(rho >= 0 && rho <= 1, "rho must be in [0, 1], got ", rho);
  TORCH_CHECK(k >= 0 && k <= 1, "k must be in [0, 1], got ", k);
  TORCH_CHECK(gamma > 0, "gamma must be > 0, got ", gamma);
}

}  // namespace saliency_fast
