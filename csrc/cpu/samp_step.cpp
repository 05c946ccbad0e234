// CPU implementation of samp_step: at::parallel_for over images, linear-time selection of the
// k-th key with std::nth_element (no full sort).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "samp_step.h"
#include "samp_step_checks.h"

namespace saliency_fast {
namespace {

template <typename T>
struct StepArgs {
  T* point;
  const T* end;
  const T* grad;
  T* grad_avg;
  T* attribution;
  bool* active;
  int64_t* active_count;
  int64_t* step_count;
  const T* bound;
  int64_t channels, pixels, k;
  T momentum, atol, rtol;
  bool insertion, exact_ties;
};

// One image: `image` indexes the state, `row` the gradient.
template <typename T>
void step_one_image(const StepArgs<T>& a, int64_t image, int64_t row, std::vector<T>& proj,
                    std::vector<T>& keys, std::vector<int64_t>& chosen) {
  const int64_t C = a.channels, HW = a.pixels;
  T* point = a.point + image * C * HW;
  const T* end = a.end + image * C * HW;
  const T* grad = a.grad + row * C * HW;
  T* grad_avg = a.grad_avg + image * C * HW;
  bool* active = a.active + image * HW;

  // 1. momentum, then the first-order score change of moving each pixel fully. Plane by
  //    plane, so the inner loops run over contiguous memory and vectorise; the per-pixel sum
  //    still adds the channels in order 0..C-1, as the CUDA kernel does.
  for (int64_t c = 0; c < C; ++c) {
    const T* g = grad + c * HW;
    T* avg = grad_avg + c * HW;
    for (int64_t p = 0; p < HW; ++p) avg[p] = samp::momentum_update(g[p], avg[p], a.momentum);
  }
  std::fill(proj.begin(), proj.end(), T(0));
  for (int64_t c = 0; c < C; ++c) {
    const T* avg = grad_avg + c * HW;
    const T* e = end + c * HW;
    const T* x = point + c * HW;
    for (int64_t p = 0; p < HW; ++p) proj[p] += avg[p] * (e[p] - x[p]);
  }
  keys.clear();
  for (int64_t p = 0; p < HW; ++p) {
    if (active[p]) keys.push_back(samp::selection_key(proj[p], a.insertion));
  }
  const int64_t n_active = static_cast<int64_t>(keys.size());
  if (n_active == 0) {
    a.active_count[image] = 0;
    return;
  }
  a.step_count[image] += 1;

  // 2. the k-th smallest key v among active pixels, then the chosen set.
  const int64_t k = std::min(a.k, n_active);
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
  const T kth = keys[k - 1];
  int64_t tie_quota = 0;  // exact ties: how many pixels equal to v still move (by index)
  if (a.exact_ties) {
    const int64_t below = std::count_if(keys.begin(), keys.end(), [kth](T key) { return key < kth; });
    tie_quota = k - below;
  }
  chosen.clear();
  T step_l1 = T(0);
  for (int64_t p = 0; p < HW; ++p) {
    if (!active[p]) continue;
    const T key = samp::selection_key(proj[p], a.insertion);
    const bool take = key < kth || (key == kth && (!a.exact_ties || tie_quota-- > 0));
    if (!take) continue;
    chosen.push_back(p);
    for (int64_t c = 0; c < C; ++c) {
      const T gap = end[c * HW + p] - point[c * HW + p];
      step_l1 += gap < T(0) ? -gap : gap;
    }
  }

  // 3. IC scaling, then move the chosen pixels and accumulate their attribution.
  const T scale = samp::step_scale(step_l1, a.bound[image]);
  int64_t finished = 0;
  for (const int64_t p : chosen) {
    a.attribution[image * HW + p] += scale * proj[p];
    bool still_active = false;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = c * HW + p;
      point[i] = samp::move_towards(point[i], end[i], scale);
      still_active |= samp::channel_active(point[i], end[i], a.atol, a.rtol);
    }
    active[p] = still_active;
    finished += !still_active;
  }
  a.active_count[image] = n_active - finished;
}

void samp_step_cpu(at::Tensor point, const at::Tensor& end, const at::Tensor& grad,
                   at::Tensor grad_avg, at::Tensor attribution, at::Tensor active,
                   at::Tensor active_count, at::Tensor step_count, const at::Tensor& rows, const at::Tensor& bound,
                   int64_t k, double momentum, bool insertion, bool exact_ties, double atol,
                   double rtol) {
  check_samp_step(point, end, grad, grad_avg, attribution, active, active_count, step_count, rows,
                  bound, k);
  const int64_t B = point.size(0), n_rows = rows.size(0);
  const int64_t* row_images = rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < n_rows; ++r) {
    TORCH_CHECK(row_images[r] >= 0 && row_images[r] < B, "rows[", r, "] = ", row_images[r],
                " is outside [0, ", B, ")");
  }
  AT_DISPATCH_FLOATING_TYPES(point.scalar_type(), "samp_step_cpu", [&] {
    const StepArgs<scalar_t> args{point.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(),
                                  grad.data_ptr<scalar_t>(), grad_avg.data_ptr<scalar_t>(),
                                  attribution.data_ptr<scalar_t>(), active.data_ptr<bool>(),
                                  active_count.data_ptr<int64_t>(),
                                  step_count.data_ptr<int64_t>(), bound.data_ptr<scalar_t>(),
                                  point.size(1), point.size(2) * point.size(3), k,
                                  static_cast<scalar_t>(momentum), static_cast<scalar_t>(atol),
                                  static_cast<scalar_t>(rtol), insertion, exact_ties};
    at::parallel_for(0, n_rows, 1, [&](int64_t begin, int64_t stop) {
      std::vector<scalar_t> proj(args.pixels), keys;
      std::vector<int64_t> chosen;
      keys.reserve(args.pixels);
      chosen.reserve(args.pixels);
      for (int64_t r = begin; r < stop; ++r) {
        step_one_image(args, row_images[r], r, proj, keys, chosen);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) { m.impl("samp_step", &samp_step_cpu); }

}  // namespace saliency_fast
