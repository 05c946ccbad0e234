// CPU implementation of samp_step: at::parallel_for over images; per image one fused pass for
// momentum and projection, then a linear-time MSD radix selection of the k-th key on the
// order-preserving bit patterns (see select_kth), then the move of the chosen pixels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ordered_bits.h"
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

// Per-thread scratch, reused across images: the projection, every pixel's ordered key, the
// chosen pixels, the radix histogram and the candidates of the bucket that holds the k-th key.
template <typename T>
struct Workspace {
  using U = typename OrderedBits<T>::U;
  // Radix digit: as many bits as the image has pixels, 8 to 12, so that small images clear a
  // small histogram and large ones split their keys finely.
  explicit Workspace(int64_t pixels)
      : proj(pixels), keys(pixels), chosen(pixels),
        digit_bits(std::clamp(static_cast<int>(std::bit_width(static_cast<uint64_t>(pixels))), 8, 12)),
        histogram(size_t(1) << digit_bits) {
    candidates.reserve(pixels);
  }
  int shift() const { return OrderedBits<T>::kBits - digit_bits; }

  std::vector<T> proj;
  std::vector<U> keys;
  std::vector<int64_t> chosen;  // the pixels this step moves, ascending
  int digit_bits;
  std::vector<int64_t> histogram;
  std::vector<U> candidates;
};

// The calling thread's workspace for images of `pixels` pixels, kept across calls: the worker
// threads persist, and fresh megabyte-sized buffers would cost page faults on every step.
template <typename T>
Workspace<T>& thread_workspace(int64_t pixels) {
  thread_local std::unique_ptr<Workspace<T>> workspace;
  if (!workspace || workspace->proj.size() != static_cast<size_t>(pixels)) {
    workspace = std::make_unique<Workspace<T>>(pixels);
  }
  return *workspace;
}

// An inactive pixel's key: above every active key (those are at most to_ordered(+inf)).
template <typename U>
constexpr U kInactiveKey = ~U(0);

// Momentum, then the first-order score change of moving each pixel fully. Plane by plane, so
// the loops run over contiguous memory; the per-pixel sum adds the channels in order 0..C-1
// from zero, as the CUDA kernel does. kPlain (momentum 1) is a separate instantiation so the
// loop has no branch and vectorises.
template <bool kPlain, typename T>
void project(const StepArgs<T>& a, const T* point, const T* end, const T* grad, T* grad_avg, T* proj) {
  const int64_t HW = a.pixels;
  const T momentum = kPlain ? T(1) : a.momentum;
  std::fill(proj, proj + HW, T(0));
  for (int64_t c = 0; c < a.channels; ++c) {
    const T* g = grad + c * HW;
    const T* e = end + c * HW;
    const T* x = point + c * HW;
    T* avg = grad_avg + c * HW;
    for (int64_t p = 0; p < HW; ++p) {
      avg[p] = samp::momentum_update(g[p], avg[p], momentum);
      proj[p] += avg[p] * (e[p] - x[p]);
    }
  }
}

// The bucket of `histogram` that holds the k-th key, counting from `below` keys in the buckets
// before the histogram's first; adds the keys of the buckets it skips to `below`.
size_t bucket_holding(const std::vector<int64_t>& histogram, int64_t k, int64_t& below) {
  size_t bucket = 0;
  while (below + histogram[bucket] < k) below += histogram[bucket++];
  return bucket;
}

// The k-th smallest active key (k <= #active) and, for exact ties, how many pixels equal to it
// still move. MSD radix select on the ordered bit patterns: the top digit's histogram (filled
// by the keys pass) picks the bucket that holds the k-th key; while that bucket is large, the
// next digit's histogram of its keys narrows it again; std::nth_element finishes on a few keys.
// Linear time, and no full pass of nth_element (branchy, mispredicting) over the image.
template <typename T>
std::pair<typename OrderedBits<T>::U, int64_t> select_kth(Workspace<T>& w, int64_t pixels, int64_t k,
                                                          bool exact_ties) {
  using U = typename OrderedBits<T>::U;
  constexpr size_t kSmallBucket = 64;
  int shift = w.shift();
  int64_t below = 0;  // active keys in the buckets below the k-th key's bucket
  const U bucket = bucket_holding(w.histogram, k, below);
  w.candidates.clear();
  for (int64_t p = 0; p < pixels; ++p) {
    const U key = w.keys[p];
    if (key != kInactiveKey<U> && (key >> shift) == bucket) w.candidates.push_back(key);
  }
  while (w.candidates.size() > kSmallBucket && shift > 0) {
    const int next_shift = std::max(0, shift - w.digit_bits);
    const U digit_mask = (U(1) << (shift - next_shift)) - 1;  // the bits [next_shift, shift)
    const auto digit = [&](U key) { return static_cast<size_t>((key >> next_shift) & digit_mask); };
    std::fill(w.histogram.begin(), w.histogram.end(), int64_t(0));
    for (const U key : w.candidates) w.histogram[digit(key)] += 1;
    const size_t sub_bucket = bucket_holding(w.histogram, k, below);
    const auto outside = [&](U key) { return digit(key) != sub_bucket; };
    w.candidates.erase(std::remove_if(w.candidates.begin(), w.candidates.end(), outside), w.candidates.end());
    shift = next_shift;
  }
  const auto kth_position = w.candidates.begin() + (k - below - 1);
  std::nth_element(w.candidates.begin(), kth_position, w.candidates.end());
  const U kth = *kth_position;
  if (!exact_ties) return {kth, 0};
  below += std::count_if(w.candidates.begin(), w.candidates.end(), [kth](U key) { return key < kth; });
  return {kth, k - below};
}

// One image: `image` indexes the state, `row` the gradient.
template <typename T>
void step_one_image(const StepArgs<T>& a, int64_t image, int64_t row, Workspace<T>& w) {
  using U = typename OrderedBits<T>::U;
  const int64_t C = a.channels, HW = a.pixels;
  T* point = a.point + image * C * HW;
  const T* end = a.end + image * C * HW;
  bool* active = a.active + image * HW;
  const T* grad = a.grad + row * C * HW;
  T* grad_avg = a.grad_avg + image * C * HW;
  if (a.momentum == T(1)) {
    project<true>(a, point, end, grad, grad_avg, w.proj.data());
  } else {
    project<false>(a, point, end, grad, grad_avg, w.proj.data());
  }

  // 1. every pixel's ordered key and the histogram of the active keys' top digit.
  std::fill(w.histogram.begin(), w.histogram.end(), int64_t(0));
  const int shift = w.shift();
  int64_t n_active = 0;
  for (int64_t p = 0; p < HW; ++p) {
    U key = kInactiveKey<U>;
    if (active[p]) {
      key = to_ordered(samp::selection_key(w.proj[p], a.insertion));
      w.histogram[key >> shift] += 1;
      n_active += 1;
    }
    w.keys[p] = key;
  }
  if (n_active == 0) {
    a.active_count[image] = 0;
    return;
  }
  a.step_count[image] += 1;

  // 2. the k-th smallest key among active pixels, then the chosen set: keys below it, and ties
  //    with it (all, or the first `tie_quota` by index).
  auto [kth, tie_quota] = select_kth(w, HW, std::min(a.k, n_active), a.exact_ties);
  // Branch-free compaction: about k of the HW pixels are taken, in no predictable pattern.
  int64_t* chosen = w.chosen.data();
  int64_t n_chosen = 0;
  T step_l1 = T(0);
  for (int64_t p = 0; p < HW; ++p) {
    const U key = w.keys[p];  // inactive pixels are above kth
    const bool tie = key == kth;
    chosen[n_chosen] = p;
    n_chosen += key < kth || (tie && (!a.exact_ties || tie_quota > 0));
    tie_quota -= tie && a.exact_ties;
  }
  for (int64_t j = 0; j < n_chosen; ++j) {
    const int64_t p = chosen[j];
    for (int64_t c = 0; c < C; ++c) step_l1 += samp::distance(point[c * HW + p], end[c * HW + p]);
  }

  // 3. IC scaling, then move the chosen pixels and accumulate their attribution.
  const T scale = samp::step_scale(step_l1, a.bound[image]);
  int64_t finished = 0;
  for (int64_t j = 0; j < n_chosen; ++j) {
    const int64_t p = chosen[j];
    a.attribution[image * HW + p] += scale * w.proj[p];
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
  std::vector<bool> seen(B, false);  // two rows on one image would race on its state
  for (int64_t r = 0; r < n_rows; ++r) {
    TORCH_CHECK(row_images[r] >= 0 && row_images[r] < B, "rows[", r, "] = ", row_images[r],
                " is outside [0, ", B, ")");
    TORCH_CHECK(!seen[row_images[r]], "rows must be distinct, but image ", row_images[r], " appears twice");
    seen[row_images[r]] = true;
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
    // Images are handed out one at a time, not in fixed halves: images differ in how many
    // pixels are still active, and on a shared machine one thread may run slower than another.
    std::atomic<int64_t> next_row{0};
    const int64_t tasks = std::min<int64_t>(n_rows, at::get_num_threads());
    at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
      Workspace<scalar_t>& workspace = thread_workspace<scalar_t>(args.pixels);
      for (int64_t r = next_row++; r < n_rows; r = next_row++) {
        step_one_image(args, row_images[r], r, workspace);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) { m.impl("samp_step", &samp_step_cpu); }

}  // namespace saliency_fast
