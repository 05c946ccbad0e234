#pragma once
// Per-element math of one SAMP step (samp.md), shared by csrc/cpu/samp_step.cpp and
// csrc/cuda/samp_step.cu.
#include <cmath>
#include <cstdint>
#include <limits>

#include "macros.h"
#include "ordered_bits.h"

namespace saliency_fast {
namespace samp {

// MS: gbar = m·g + (1 − m)·gbar. m == 1 (no momentum, or the first step) is exactly g, so
// an uninitialised gbar never leaks in.
template <typename T>
SF_HOST_DEVICE T momentum_update(T grad, T grad_avg, T momentum) {
  return momentum == T(1) ? grad : momentum * grad + (T(1) - momentum) * grad_avg;
}

// Pixels are chosen by the smallest key (order_key: NaN never wins, −0 ties with +0): proj for
// deletion, −proj for insertion.
template <typename T>
SF_HOST_DEVICE T selection_key(T proj, bool insertion) {
  return order_key(insertion ? -proj : proj);
}

// |end − point|: one channel's share of a full move's L1 size.
template <typename T>
SF_HOST_DEVICE T distance(T point, T end) {
  return std::abs(end - point);
}

// A channel still has to move while |p − e| > atol + rtol·|e| (torch.isclose's rule).
template <typename T>
SF_HOST_DEVICE bool channel_active(T point, T end, T atol, T rtol) {
  return distance(point, end) > atol + rtol * std::abs(end);
}

// IC: a step whose L1 size exceeds the bound is shrunk to the bound. bound = +inf: no IC.
template <typename T>
SF_HOST_DEVICE T step_scale(T step_l1, T bound) {
  return step_l1 > bound ? bound / step_l1 : T(1);
}

// A full move lands exactly on the end value; a partial move goes scale of the way.
template <typename T>
SF_HOST_DEVICE T move_towards(T point, T end, T scale) {
  return scale == T(1) ? end : point + scale * (end - point);
}

// The step's L1 size (IC) is summed in one fixed order on every backend, so that the CPU and
// CUDA scales, hence the whole state after a step, are bit-identical: lane t of kSumLanes adds
// the chosen pixels p ≡ t (mod kSumLanes) in increasing p, channels 0..C−1 of each, starting
// from 0 (the CUDA select kernel's thread t owns exactly those pixels); then the lanes are added
// pairwise, halving: lane t += lane t + half for half = kSumLanes/2, ..., 1.
constexpr int kSumLanes = 512;

template <typename T>
SF_HOST_DEVICE void add_pixel_distance(T& lane, const T* point, const T* end, int64_t pixel,
                                       int64_t channels, int64_t pixels) {
  for (int64_t c = 0; c < channels; ++c) lane += distance(point[c * pixels + pixel], end[c * pixels + pixel]);
}

// tie_tolerance t: with ties "include", every active pixel whose key is <= the k-th key + t moves
// (the published code's margin; t = 0 is the plain top-k with its ties). Computed in T.
template <typename T>
SF_HOST_DEVICE T selection_limit(T kth, T tie_tolerance) {
  return kth + tie_tolerance;
}

}  // namespace samp
}  // namespace saliency_fast
