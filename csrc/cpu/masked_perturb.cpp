// CPU implementations of masked_perturb (one fused PGD step, in place on delta) and
// masked_random_fill (Saliency Guided Training's masking): one pass over memory each,
// at::parallel_for over (image, channel) planes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "masked_perturb.h"

namespace saliency_fast {
namespace {

// One (image, channel) plane; restrict-qualified so the compiler vectorises the loop.
template <typename T>
void perturb_plane(const T* __restrict__ x, T* __restrict__ delta, const T* __restrict__ grad,
                   const T* __restrict__ budget, int64_t pixels, T ratio, T low, T high) {
  for (int64_t p = 0; p < pixels; ++p) {
    delta[p] = perturb::pgd_update(x[p], delta[p], grad[p], budget[p], ratio, low, high);
  }
}

void masked_perturb_cpu(const at::Tensor& x, at::Tensor delta, const at::Tensor& grad,
                        const at::Tensor& budget, double step_size, double epsilon, double low,
                        double high) {
  check_masked_perturb(x, delta, grad, budget, step_size, epsilon, low, high);
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.numel() == 0) return;
  const double ratio = epsilon > 0 ? step_size / epsilon : 0.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_perturb_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* dp = delta.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* ep = budget.data_ptr<scalar_t>();
    const scalar_t r = static_cast<scalar_t>(ratio), lo = static_cast<scalar_t>(low),
                   hi = static_cast<scalar_t>(high);
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t offset = plane * HW;
        perturb_plane(xp + offset, dp + offset, gp + offset, ep + (plane / C) * HW, HW, r, lo, hi);
      }
    });
  });
}

// The minimum and maximum of v[0, n) (n >= 1) as torch.min/max (and the CUDA op's at::aminmax)
// give them: NaN when any element is NaN. (std::minmax_element ignores a NaN unless it is first.)
template <typename T>
void nan_propagating_minmax(const T* v, int64_t n, T& lo, T& hi) {
  lo = v[0];
  hi = v[0];
  bool any_nan = false;
  for (int64_t i = 0; i < n; ++i) {
    lo = v[i] < lo ? v[i] : lo;
    hi = v[i] > hi ? v[i] : hi;
    any_nan |= v[i] != v[i];
  }
  if (any_nan) lo = hi = std::numeric_limits<T>::quiet_NaN();
}

at::Tensor masked_random_fill_cpu(const at::Tensor& x, const at::Tensor& mask,
                                  const at::Tensor& noise) {
  check_masked_random_fill(x, mask, noise);
  at::Tensor out = at::empty_like(x);
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_random_fill_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const bool* mp = mask.data_ptr<bool>();
    const scalar_t* np = noise.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* image = xp + b * C * HW;
        scalar_t lo, hi;
        nan_propagating_minmax(image, C * HW, lo, hi);
        const bool* m = mp + b * HW;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t offset = (b * C + c) * HW;
          for (int64_t p = 0; p < HW; ++p) {
            op[offset + p] = perturb::random_fill(xp[offset + p], m[p], np[offset + p], lo, hi);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("masked_perturb", &masked_perturb_cpu);
  m.impl("masked_random_fill", &masked_random_fill_cpu);
}

}  // namespace saliency_fast
