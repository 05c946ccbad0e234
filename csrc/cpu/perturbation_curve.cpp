// CPU implementation of perturbation_curve: at::parallel_for over (image, curve point) pairs;
// each pair writes one whole perturbed image, a branch-free select the compiler vectorises.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "perturbation_curve.h"

namespace saliency_fast {
namespace {

template <typename T>
void fill_curve(const T* start, const T* finish, const int64_t* ranks, const int64_t* counts,
                T* out, int64_t B, int64_t S, int64_t C, int64_t HW) {
  // grain: enough (image, point) pairs per task that each task writes ~32K elements.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, C * HW));
  at::parallel_for(0, B * S, grain, [&](int64_t begin, int64_t stop) {
    for (int64_t pair = begin; pair < stop; ++pair) {
      const int64_t b = pair / S, s = pair % S;
      const int64_t count = counts[s];
      const int64_t* rank = ranks + b * HW;
      T* dst = out + pair * C * HW;
      for (int64_t c = 0; c < C; ++c) {
        // Pick the source row by index, not by branch: the replaced/kept pattern of a
        // ranking is random, and a data-dependent branch here mispredicts about half the time.
        const T* sources[2] = {start + (b * C + c) * HW, finish + (b * C + c) * HW};
        T* row = dst + c * HW;
        for (int64_t p = 0; p < HW; ++p) {
          row[p] = sources[curve::is_replaced(rank[p], count)][p];
        }
      }
    }
  });
}

at::Tensor perturbation_curve_cpu(const at::Tensor& start, const at::Tensor& finish,
                                  const at::Tensor& ranks, const at::Tensor& counts) {
  check_perturbation_curve(start, finish, ranks, counts);
  const int64_t B = start.size(0), C = start.size(1), H = start.size(2), W = start.size(3);
  const int64_t S = counts.size(0);
  at::Tensor out = at::empty({B, S, C, H, W}, start.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, start.scalar_type(),
                                  "perturbation_curve_cpu", [&] {
    fill_curve<scalar_t>(start.data_ptr<scalar_t>(), finish.data_ptr<scalar_t>(),
                         ranks.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                         out.data_ptr<scalar_t>(), B, S, C, H * W);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("perturbation_curve", &perturbation_curve_cpu);
}

}  // namespace saliency_fast
