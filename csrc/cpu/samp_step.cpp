// CPU implementation of samp_step: at::parallel_for over images; per image one fused pass for
// momentum and projection, then a linear-time selection of the k-th key on the order-preserving
// bit patterns (a block filter for small k, else an MSD radix select: see choose_pixels), then
// the move of the chosen pixels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
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
  T momentum, atol, rtol, tie_tolerance;
  bool insertion, exact_ties;
};

// Pixels per block of the block filter (keep_keys_of_the_smallest_blocks).
constexpr int64_t kBlock = 16;

// Per-thread scratch, reused across images: the projection, every pixel's ordered key, the
// chosen pixels, the radix histogram, and the keys and pixels of the bucket that holds the k-th
// key. Every array holds a whole image, so compaction into them needs no bounds check.
// The number of bits needed to write ``value`` (std::bit_width is C++20, and torch before 2.10
// builds extensions as C++17).
inline int bit_width(uint64_t value) {
  int bits = 0;
  for (; value != 0; value >>= 1) ++bits;
  return bits;
}

template <typename T>
struct Workspace {
  using U = typename OrderedBits<T>::U;
  // Radix digit: as many bits as the image has pixels, 8 to 12, so that small images clear a
  // small histogram and large ones split their keys finely.
  explicit Workspace(int64_t pixels)
      : proj(pixels), keys(pixels), chosen(pixels), candidate_keys(pixels), candidate_pixels(pixels),
        kth_scratch(pixels), block_min((pixels + kBlock - 1) / kBlock),
        digit_bits(std::clamp(static_cast<int>(bit_width(static_cast<uint64_t>(pixels))), 8, 12)),
        histogram(size_t(1) << digit_bits), lanes(samp::kSumLanes) {}
  int shift() const { return OrderedBits<T>::kBits - digit_bits; }

  std::vector<T> proj;
  std::vector<U> keys;
  std::vector<int64_t> chosen;  // the pixels this step moves
  std::vector<U> candidate_keys;
  std::vector<int64_t> candidate_pixels;
  std::vector<U> kth_scratch;  // a copy of the keys std::nth_element reorders (kth_smallest)
  std::vector<U> block_min;    // the smallest key of each kBlock pixels (the block filter)
  int digit_bits;
  std::vector<int64_t> histogram;
  std::vector<T> lanes;  // the fixed-order L1 sum (samp::kSumLanes)
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

// Splits (keys[i], pixels[i]) by the digit `digit(key)` against `bucket`: pixels of lower
// digits are appended to `chosen` (their keys are below the k-th), those of `bucket` are kept,
// in order, at the front of the candidate arrays (which may be `keys`/`pixels` themselves).
// Every element is written and only the write positions depend on the digit, so there is no
// data-dependent branch to mispredict. Returns the number kept.
template <typename U, typename Digit>
int64_t split_by_digit(const U* keys, const int64_t* pixels, int64_t n, Digit digit, size_t bucket,
                       int64_t* chosen, int64_t& n_chosen, U* candidate_keys, int64_t* candidate_pixels) {
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const U key = keys[i];
    const int64_t pixel = pixels == nullptr ? i : pixels[i];
    const size_t d = digit(key);
    chosen[n_chosen] = pixel;
    n_chosen += d < bucket;
    candidate_keys[kept] = key;
    candidate_pixels[kept] = pixel;
    kept += d == bucket;
  }
  return kept;
}

// The k-th smallest of keys[0, n) (k >= 1), found by std::nth_element on a copy in `scratch`.
template <typename U>
U kth_smallest(const U* keys, int64_t n, int64_t k, U* scratch) {
  std::copy(keys, keys + n, scratch);
  std::nth_element(scratch, scratch + (k - 1), scratch + n);
  return scratch[k - 1];
}

// Among the first n candidates (w.candidate_keys and w.candidate_pixels, in pixel-index order),
// which hold every key up to the k-th smallest of the image, with `n_chosen` pixels of smaller
// keys already in w.chosen, chooses the rest: std::nth_element finds the k-th key; keys below it
// move, and its ties all move, or with exact ties the first by pixel index. Returns the number
// chosen.
template <typename T>
int64_t choose_among_candidates(Workspace<T>& w, int64_t n, int64_t n_chosen, int64_t k, bool exact_ties) {
  using U = typename OrderedBits<T>::U;
  const U* keys = w.candidate_keys.data();
  int64_t* chosen = w.chosen.data();
  const int64_t* candidate_pixels = w.candidate_pixels.data();
  const U kth = kth_smallest(keys, n, k - n_chosen, w.kth_scratch.data());
  int64_t tie_quota = n;  // every tie moves, unless exactly k must
  if (exact_ties) tie_quota = k - n_chosen - std::count_if(keys, keys + n, [kth](U key) { return key < kth; });
  for (int64_t i = 0; i < n; ++i) {
    const bool tie = keys[i] == kth;
    chosen[n_chosen] = candidate_pixels[i];
    n_chosen += keys[i] < kth || (tie && tie_quota > 0);
    tie_quota -= tie;
  }
  return n_chosen;
}

// Block filter, for k far below the image's pixel count (SAMP's default: 10 of 1024). The
// minima of k distinct blocks of kBlock pixels are k of the keys, so the k-th smallest block
// minimum lies at or above the image's k-th key; only the blocks whose minimum is at or below it
// can hold a key up to the k-th, normally about k of them, and only those are scanned: the block
// minima vectorise, while a compaction over every pixel costs one dependent store each.
// Returns the number of candidates kept (every key up to the k-th, in index order),
// or -1 when ties at the bound admit more than half the blocks (the radix select takes those).
template <typename T>
int64_t keep_keys_of_the_smallest_blocks(Workspace<T>& w, int64_t pixels, int64_t k) {
  using U = typename OrderedBits<T>::U;
  const U* keys = w.keys.data();
  U* block_min = w.block_min.data();
  const int64_t n_blocks = (pixels + kBlock - 1) / kBlock;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const U* block = keys + b * kBlock;
    const int64_t size = std::min(kBlock, pixels - b * kBlock);
    U minimum = kInactiveKey<U>;
    for (int64_t i = 0; i < size; ++i) minimum = std::min(minimum, block[i]);
    block_min[b] = minimum;
  }
  // Fewer than k blocks with an active pixel: then every active key is a candidate.
  const U limit = std::min(kth_smallest(block_min, n_blocks, k, w.kth_scratch.data()), U(kInactiveKey<U> - 1));
  const int64_t admitted = std::count_if(block_min, block_min + n_blocks, [limit](U m) { return m <= limit; });
  if (2 * admitted > n_blocks) return -1;
  U* candidate_keys = w.candidate_keys.data();
  int64_t* candidate_pixels = w.candidate_pixels.data();
  int64_t n = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    if (block_min[b] > limit) continue;
    for (int64_t p = b * kBlock; p < std::min(pixels, (b + 1) * kBlock); ++p) {
      candidate_keys[n] = keys[p];
      candidate_pixels[n] = p;
      n += keys[p] <= limit;
    }
  }
  return n;
}

// MSD radix select on the ordered bit patterns: the top digit's histogram picks the bucket that
// holds the k-th key; pixels in lower buckets are chosen at once; while the bucket is large,
// the next digit's histogram of its keys narrows it again, until few candidates are left.
// Linear time, and no full pass of nth_element (branchy, mispredicting) over the image.
template <typename T>
int64_t choose_by_radix(Workspace<T>& w, int64_t pixels, int64_t n_active, int64_t k, bool exact_ties) {
  using U = typename OrderedBits<T>::U;
  constexpr int64_t kSmallBucket = 64;
  int64_t* chosen = w.chosen.data();
  U* keys = w.candidate_keys.data();
  int64_t* candidate_pixels = w.candidate_pixels.data();
  int shift = w.shift();
  std::fill(w.histogram.begin(), w.histogram.end(), int64_t(0));
  for (int64_t p = 0; p < pixels; ++p) w.histogram[w.keys[p] >> shift] += 1;
  w.histogram.back() -= pixels - n_active;  // kInactiveKey's bucket: count active keys only
  int64_t below = 0;
  size_t bucket = bucket_holding(w.histogram, k, below);
  int64_t n_chosen = 0;  // split_by_digit chooses the `below` pixels of the lower buckets
  int64_t n = split_by_digit(w.keys.data(), nullptr, pixels, [&](U key) { return static_cast<size_t>(key >> shift); },
                             bucket, chosen, n_chosen, keys, candidate_pixels);
  while (n > kSmallBucket && shift > 0) {
    const int next_shift = std::max(0, shift - w.digit_bits);
    const U digit_mask = (U(1) << (shift - next_shift)) - 1;  // the bits [next_shift, shift)
    const auto digit = [&](U key) { return static_cast<size_t>((key >> next_shift) & digit_mask); };
    std::fill(w.histogram.begin(), w.histogram.end(), int64_t(0));
    for (int64_t i = 0; i < n; ++i) w.histogram[digit(keys[i])] += 1;
    bucket = bucket_holding(w.histogram, k, below);
    n = split_by_digit(keys, candidate_pixels, n, digit, bucket, chosen, n_chosen, keys, candidate_pixels);
    shift = next_shift;
  }
  return choose_among_candidates(w, n, n_chosen, k, exact_ties);
}

// Chooses the pixels of the k smallest active keys (k <= #active; inactive pixels hold
// kInactiveKey) into w.chosen and returns how many.
template <typename T>
int64_t choose_pixels(Workspace<T>& w, int64_t pixels, int64_t n_active, int64_t k, bool exact_ties) {
  if (4 * kBlock * k <= pixels) {  // k blocks are at most a quarter of them
    const int64_t n = keep_keys_of_the_smallest_blocks(w, pixels, k);
    if (n >= 0) return choose_among_candidates(w, n, 0, k, exact_ties);
  }
  return choose_by_radix(w, pixels, n_active, k, exact_ties);
}

// tie_tolerance t > 0: every active pixel whose key is <= (the k-th key) + t, in index order.
// The k-th key is the largest of the chosen (ties "include" chose every key up to it); keys
// within t above it may lie outside the candidates the selection kept, so all pixels are read.
template <typename T>
int64_t widen_by_tolerance(Workspace<T>& w, int64_t pixels, int64_t n_chosen, T tie_tolerance) {
  using U = typename OrderedBits<T>::U;
  U kth = 0;
  for (int64_t j = 0; j < n_chosen; ++j) kth = std::max(kth, w.keys[w.chosen[j]]);
  const U limit = to_ordered(samp::selection_limit(from_ordered<T>(kth), tie_tolerance));
  int64_t n = 0;
  for (int64_t p = 0; p < pixels; ++p) {  // inactive keys are all ones: above every limit
    w.chosen[n] = p;
    n += w.keys[p] <= limit && w.keys[p] != kInactiveKey<U>;
  }
  return n;
}

// IC's step size in the fixed order of samp::kSumLanes (see samp_step.h): sorts `chosen`.
template <typename T>
T fixed_order_l1(Workspace<T>& w, const T* point, const T* end, int64_t n_chosen, int64_t channels, int64_t pixels) {
  int64_t* chosen = w.chosen.data();
  std::sort(chosen, chosen + n_chosen);  // each lane adds its pixels in increasing index
  T* lanes = w.lanes.data();
  std::fill(lanes, lanes + samp::kSumLanes, T(0));
  for (int64_t j = 0; j < n_chosen; ++j) {
    samp::add_pixel_distance(lanes[chosen[j] % samp::kSumLanes], point, end, chosen[j], channels, pixels);
  }
  for (int half = samp::kSumLanes / 2; half > 0; half /= 2) {
    for (int t = 0; t < half; ++t) lanes[t] += lanes[t + half];
  }
  return lanes[0];
}

// The active pixels of an image. The bools are summed as 0/1 bytes: GCC does not vectorise a
// sum of bools.
int64_t count_active(const bool* active, int64_t pixels) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(active);
  uint64_t count = 0;
  for (int64_t p = 0; p < pixels; ++p) count += bytes[p];
  return static_cast<int64_t>(count);
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
  const T* proj = w.proj.data();
  if (a.momentum == T(1)) {
    project<true>(a, point, end, grad, grad_avg, w.proj.data());
  } else {
    project<false>(a, point, end, grad, grad_avg, w.proj.data());
  }

  // 1. every pixel's ordered key, inactive pixels' above every active one (the loop vectorises).
  const int64_t n_active = count_active(active, HW);
  if (n_active == 0) {
    a.active_count[image] = 0;
    return;
  }
  a.step_count[image] += 1;
  U* keys = w.keys.data();
  const auto* active_bytes = reinterpret_cast<const uint8_t*>(active);  // GCC vectorises no bool loads
  for (int64_t p = 0; p < HW; ++p) {  // kInactiveKey (all bits set) where inactive
    keys[p] = to_ordered(samp::selection_key(proj[p], a.insertion)) | (U(active_bytes[p]) - U(1));
  }

  // 2. the pixels of the k smallest keys (and ties), then their L1 size for IC.
  int64_t n_chosen = choose_pixels(w, HW, n_active, std::min(a.k, n_active), a.exact_ties);
  if (a.tie_tolerance > T(0)) n_chosen = widen_by_tolerance(w, HW, n_chosen, a.tie_tolerance);
  const int64_t* chosen = w.chosen.data();

  // 3. IC scaling (no bound: the scale is 1 whatever the size), then move the chosen pixels and
  // accumulate their attribution.
  const T bound = a.bound[image];
  const T step_l1 = bound == std::numeric_limits<T>::infinity() ? T(0) : fixed_order_l1(w, point, end, n_chosen, C, HW);
  const T scale = samp::step_scale(step_l1, bound);
  int64_t finished = 0;
  for (int64_t j = 0; j < n_chosen; ++j) {
    const int64_t p = chosen[j];
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
                   double rtol, double tie_tolerance) {
  check_samp_step(point, end, grad, grad_avg, attribution, active, active_count, step_count, rows,
                  bound, k, exact_ties, tie_tolerance);
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
                                  static_cast<scalar_t>(rtol), static_cast<scalar_t>(tie_tolerance),
                                  insertion, exact_ties};
    // Contiguous ranges of rows (parallel_for's static split), not rows handed out one at a time:
    // each thread then finds in its own cache the gradients its share of the model's backward has
    // just written.
    at::parallel_for(0, n_rows, 1, [&](int64_t begin, int64_t stop) {
      Workspace<scalar_t>& workspace = thread_workspace<scalar_t>(args.pixels);
      for (int64_t r = begin; r < stop; ++r) step_one_image(args, row_images[r], r, workspace);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) { m.impl("samp_step", &samp_step_cpu); }

}  // namespace saliency_fast
