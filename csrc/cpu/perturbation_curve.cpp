// CPU implementation of perturbation_curve: at::parallel_for over (image, curve point) pairs;
// each pair writes one whole perturbed image, a branch-free select on int32 levels that the
// compiler vectorises (see curve_levels).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "perturbation_curve.h"

namespace saliency_fast {
namespace {

// rank < counts[s] compared in int64 does not vectorise on baseline x86-64 (no 64-bit integer
// compare before SSE4.2), and this loop writes B·S·C·H·W elements. So the comparison is
// re-expressed on int32 before the loop: with the counts sorted, a pixel's level = how many
// counts are <= its rank, and a curve point's position = how many counts are < counts[s];
// rank < counts[s] ⇔ level <= position (both in [0, S]).
struct CurveLevels {
  std::vector<int32_t> pixel_level;     // (B, HW)
  std::vector<int32_t> point_position;  // (S,)
};

// How many of the n sorted values are <= value: std::upper_bound without branches (a pixel's
// rank against the counts is unpredictable, so a branchy search mispredicts at every level).
int32_t count_at_most(const int64_t* sorted, int64_t n, int64_t value) {
  if (n == 0) return 0;
  const int64_t* base = sorted;
  for (int64_t length = n; length > 1;) {
    const int64_t half = length / 2;
    base = base[half - 1] <= value ? base + half : base;
    length -= half;
  }
  return static_cast<int32_t>(base - sorted) + (*base <= value);
}

// level_of_rank[r] = how many of the S sorted counts are <= r, for every rank r in [0, HW): one
// merge of the counts with 0..HW-1. Ranks are usually a permutation of [0, HW), so a pixel's
// level is then one table load instead of a binary search (log2 S dependent loads).
std::vector<int32_t> level_of_rank(const std::vector<int64_t>& sorted, int64_t HW) {
  std::vector<int32_t> table(HW);
  int64_t at_most = 0;
  const int64_t S = static_cast<int64_t>(sorted.size());
  for (int64_t r = 0; r < HW; ++r) {
    while (at_most < S && sorted[at_most] <= r) ++at_most;
    table[r] = static_cast<int32_t>(at_most);
  }
  return table;
}

CurveLevels curve_levels(const int64_t* ranks, const int64_t* counts, int64_t B, int64_t S, int64_t HW) {
  std::vector<int64_t> sorted(counts, counts + S);
  std::sort(sorted.begin(), sorted.end());
  CurveLevels levels{std::vector<int32_t>(B * HW), std::vector<int32_t>(S)};
  for (int64_t s = 0; s < S; ++s) {
    levels.point_position[s] =
        static_cast<int32_t>(std::lower_bound(sorted.begin(), sorted.end(), counts[s]) - sorted.begin());
  }
  const std::vector<int32_t> table = level_of_rank(sorted, HW);
  at::parallel_for(0, B * HW, 4096, [&](int64_t begin, int64_t stop) {
    for (int64_t i = begin; i < stop; ++i) {
      const int64_t rank = ranks[i];
      // Ranks outside [0, HW) are allowed (the rule is rank < count for any int64): searched.
      levels.pixel_level[i] = (rank >= 0 && rank < HW) ? table[rank] : count_at_most(sorted.data(), S, rank);
    }
  });
  return levels;
}

template <typename T>
void fill_curve(const T* start, const T* finish, const CurveLevels& levels, T* out, int64_t B,
                int64_t S, int64_t C, int64_t HW) {
  // grain: enough (image, point) pairs per task that each task writes ~32K elements.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, C * HW));
  at::parallel_for(0, B * S, grain, [&](int64_t begin, int64_t stop) {
    for (int64_t pair = begin; pair < stop; ++pair) {
      const int64_t b = pair / S, s = pair % S;
      const int32_t position = levels.point_position[s];
      const int32_t* level = levels.pixel_level.data() + b * HW;
      T* dst = out + pair * C * HW;
      for (int64_t c = 0; c < C; ++c) {
        const T* kept = start + (b * C + c) * HW;
        const T* replaced = finish + (b * C + c) * HW;
        T* row = dst + c * HW;
        for (int64_t p = 0; p < HW; ++p) {
          // Both loads unconditional: the select becomes a branch-free, vectorised blend.
          const T finish_value = replaced[p], start_value = kept[p];
          row[p] = level[p] <= position ? finish_value : start_value;
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
  TORCH_CHECK(S < std::numeric_limits<int32_t>::max(), "counts has ", S, " curve points; at most ",
              std::numeric_limits<int32_t>::max() - 1, " are supported");
  const CurveLevels levels = curve_levels(ranks.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), B, S, H * W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, start.scalar_type(),
                                  "perturbation_curve_cpu", [&] {
    fill_curve<scalar_t>(start.data_ptr<scalar_t>(), finish.data_ptr<scalar_t>(), levels,
                         out.data_ptr<scalar_t>(), B, S, C, H * W);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("perturbation_curve", &perturbation_curve_cpu);
}

}  // namespace saliency_fast
