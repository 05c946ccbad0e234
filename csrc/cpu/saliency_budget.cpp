// CPU implementation of saliency_budget: at::parallel_for over images. The "topk" and "mass"
// thresholds are found by selection (std::nth_element and a mass-weighted quickselect, linear
// expected time), never by a full sort; only "inverse", which needs every pixel's rank, sorts.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "saliency_budget.h"

namespace saliency_fast {
namespace {

using budget::Mode;

// The m-th smallest key (m >= 1) of one image, by selection. `keys` is scratch space.
template <typename T>
T kth_smallest(const T* s, int64_t n, int64_t m, std::vector<T>& keys) {
  keys.resize(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = order_key(s[i]);
  std::nth_element(keys.begin(), keys.begin() + (m - 1), keys.end());
  return keys[m - 1];
}

// The largest value v* whose cumulative mass Σ_{s_j <= v*} s_j stays within `limit`, found by
// a quickselect on mass: each round splits the undecided range around its median into
// (< p, == p, > p); if everything up to p fits, the region grows past p, otherwise it stops
// below p. Returns false when not even the smallest value fits.
template <typename T>
bool mass_threshold(const T* s, int64_t n, double limit, std::vector<T>& keys, T* threshold) {
  keys.resize(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = order_key(s[i]);
  auto lo = keys.begin(), hi = keys.end();
  double taken = 0.0;
  bool found = false;
  while (lo < hi) {
    auto mid = lo + (hi - lo) / 2;
    std::nth_element(lo, mid, hi);
    const T pivot = *mid;
    auto less_end = std::partition(lo, hi, [pivot](T v) { return v < pivot; });
    auto equal_end = std::partition(less_end, hi, [pivot](T v) { return v == pivot; });
    const double mass = std::accumulate(lo, equal_end, 0.0);
    if (taken + mass <= limit) {
      taken += mass;
      *threshold = pivot;
      found = true;
      lo = equal_end;
    } else {
      hi = less_end;
    }
  }
  return found;
}

template <typename T>
void budget_one_image(const T* s, T* out, int64_t n, Mode mode, double epsilon, double rho, double k,
                      double gamma, std::vector<T>& keys, std::vector<int64_t>& order) {
  if (budget::is_everything(mode, rho)) {
    std::fill(out, out + n, static_cast<T>(epsilon));
    return;
  }
  if (mode == Mode::kInverse) {
    order.resize(n);
    std::iota(order.begin(), order.end(), int64_t(0));
    keys.resize(n);
    for (int64_t i = 0; i < n; ++i) keys[i] = order_key(s[i]);
    std::sort(order.begin(), order.end(), [&keys](int64_t a, int64_t b) { return keys[a] < keys[b]; });
    int64_t first_of_group = 0;  // ties share the position of their group's first member
    for (int64_t j = 0; j < n; ++j) {
      if (j > 0 && keys[order[j]] != keys[order[j - 1]]) first_of_group = j;
      out[order[j]] = budget::inverse_budget<T>(first_of_group, n, epsilon, gamma);
    }
    return;
  }
  T threshold = T(0);
  bool any = false;
  if (mode == Mode::kTopk) {
    const int64_t m = budget::topk_count(k, n);
    any = m > 0;
    if (any) threshold = kth_smallest(s, n, m, keys);
  } else {  // kMass
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += static_cast<double>(s[i]);
    any = mass_threshold(s, n, rho * total, keys, &threshold);
  }
  for (int64_t i = 0; i < n; ++i) {
    out[i] = budget::threshold_budget(order_key(s[i]), threshold, any, static_cast<T>(epsilon));
  }
}

at::Tensor saliency_budget_cpu(const at::Tensor& saliency, c10::string_view mode_name,
                               double epsilon, double rho, double k, double gamma) {
  check_saliency_budget(saliency, epsilon, rho, k, gamma);
  const Mode mode = parse_budget_mode(mode_name);
  at::Tensor out = at::empty_like(saliency);
  const int64_t B = saliency.size(0), n = saliency.size(1) * saliency.size(2);
  if (B == 0 || n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(saliency.scalar_type(), "saliency_budget_cpu", [&] {
    const scalar_t* s = saliency.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> keys;
      std::vector<int64_t> order;
      for (int64_t b = begin; b < end; ++b) {
        budget_one_image(s + b * n, o + b * n, n, mode, epsilon, rho, k, gamma, keys, order);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) { m.impl("saliency_budget", &saliency_budget_cpu); }

}  // namespace saliency_fast
