// CUDA implementation of samp_step. Three launches (and a memset) on the current stream, no
// host sync:
//  0. samp_claim_kernel: counts how many rows name each image, so that an invalid or repeated
//     row can never let two blocks race on one image's state (the CPU op raises instead; this
//     op cannot without a sync): every image named by a repeated row is left untouched, and
//     rows outside [0, B) are ignored;
//  1. samp_project_kernel (grid-stride over rows × pixels): momentum and the projection;
//  2. samp_select_apply_kernel (one block per image): radix select of the k-th key among the
//     active pixels (8 bits per pass over order-preserving bit patterns, 32-bit shared counters:
//     native shared atomics), the chosen set under either tie policy, the step's L1 size (in
//     the fixed order of samp_step.h, so the CPU and CUDA results are bit-identical), IC
//     scaling, and the in-place update.
// Every thread of a block owns the pixels p ≡ threadIdx.x (mod blockDim.x) in every pass, so a
// thread only ever reads back what it wrote itself into the per-row workspaces.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "cuda/block_reduce.cuh"
#include "cuda/launch.cuh"
#include "ordered_bits.h"
#include "samp_step.h"
#include "samp_step_checks.h"

namespace saliency_fast {
namespace {

constexpr int kProjectThreads = 256;
constexpr int kSelectThreads = 512;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
static_assert(kSelectThreads == samp::kSumLanes, "thread t of a select block is lane t of the L1 sum");

// claims[image] = how many rows name it (rows outside [0, batch) name none).
__global__ void samp_claim_kernel(const int64_t* __restrict__ rows, int* __restrict__ claims, int64_t n_rows,
                                  int64_t batch) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n_rows) return;
  const int64_t image = rows[row];
  if (image >= 0 && image < batch) atomicAdd(&claims[image], 1);
}

// Whether a row may update its image: the image exists and no other row names it.
__device__ __forceinline__ bool owns_image(int64_t image, int64_t batch, const int* __restrict__ claims) {
  return image >= 0 && image < batch && claims[image] == 1;
}

template <typename T>
__global__ void samp_project_kernel(const T* __restrict__ point, const T* __restrict__ end,
                                    const T* __restrict__ grad, T* __restrict__ grad_avg,
                                    const int64_t* __restrict__ rows, const int* __restrict__ claims,
                                    T* __restrict__ proj, int64_t n_rows, int64_t batch, int64_t channels,
                                    int64_t pixels, T momentum) {
  const int64_t total = n_rows * pixels;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / pixels, p = i % pixels;
    const int64_t image = rows[row];
    if (!owns_image(image, batch, claims)) continue;
    const int64_t state = image * channels * pixels + p;
    const int64_t g = row * channels * pixels + p;
    T sum = T(0);
    for (int64_t c = 0; c < channels; ++c) {
      const T avg = samp::momentum_update(grad[g + c * pixels], grad_avg[state + c * pixels], momentum);
      grad_avg[state + c * pixels] = avg;
      sum += avg * (end[state + c * pixels] - point[state + c * pixels]);
    }
    proj[i] = sum;
  }
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads) samp_select_apply_kernel(
    T* __restrict__ point, const T* __restrict__ end, T* __restrict__ attribution,
    bool* __restrict__ active, int64_t* __restrict__ active_count, int64_t* __restrict__ step_count,
    const int64_t* __restrict__ rows, const int* __restrict__ claims, const T* __restrict__ bound,
    const T* __restrict__ proj_all, uint8_t* __restrict__ chosen_all, int64_t batch, int64_t channels,
    int64_t pixels, int64_t k, bool insertion, bool exact_ties, T atol, T rtol, T tie_tolerance) {
  using Bits = OrderedBits<T>;
  using U = typename Bits::U;
  using TieScan = cub::BlockScan<int, kSelectThreads>;
  __shared__ union {
    typename cuda::BlockSum<long long, kSelectThreads>::TempStorage count;
    typename TieScan::TempStorage scan;
  } temp;
  // 32-bit counters (pixels < 2^31, checked on the host): a 64-bit shared atomicAdd compiles
  // to a compare-and-swap loop, on which the first pass's few crowded bins would spin.
  __shared__ unsigned int histogram[kRadixBins];
  __shared__ T lanes[kSelectThreads];
  __shared__ long long count_slot;
  __shared__ int digit_slot;

  const int64_t row = blockIdx.x;
  const int64_t image = rows[row];
  if (!owns_image(image, batch, claims)) return;
  const int tid = threadIdx.x;
  const T* proj = proj_all + row * pixels;
  uint8_t* chosen = chosen_all + row * pixels;
  bool* image_active = active + image * pixels;
  T* image_point = point + image * channels * pixels;
  const T* image_end = end + image * channels * pixels;

  long long local = 0;
  for (int64_t p = tid; p < pixels; p += kSelectThreads) local += image_active[p];
  const long long n_active = cuda::block_sum<long long, kSelectThreads>(local, temp.count, &count_slot);
  if (n_active == 0) {
    if (tid == 0) active_count[image] = 0;
    return;
  }
  const long long kk = n_active < k ? n_active : k;

  // Radix select: the kk-th smallest ordered key, most significant digit first.
  U desired = 0, mask = 0;
  long long remaining = kk;
  for (int shift = Bits::kBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int b = tid; b < kRadixBins; b += kSelectThreads) histogram[b] = 0;
    __syncthreads();
    for (int64_t p = tid; p < pixels; p += kSelectThreads) {
      if (!image_active[p]) continue;
      const U u = to_ordered(samp::selection_key(proj[p], insertion));
      if ((u & mask) == desired) atomicAdd(&histogram[(u >> shift) & (kRadixBins - 1)], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      long long below = 0;
      int digit = 0;
      for (; digit < kRadixBins - 1; ++digit) {
        if (below + static_cast<long long>(histogram[digit]) >= remaining) break;
        below += static_cast<long long>(histogram[digit]);
      }
      digit_slot = digit;
      count_slot = remaining - below;
    }
    __syncthreads();
    desired |= static_cast<U>(digit_slot) << shift;
    mask |= static_cast<U>(kRadixBins - 1) << shift;
    remaining = count_slot;
    __syncthreads();  // every thread has read the slots before the next pass rewrites them
  }
  const T kth = from_ordered<T>(desired);

  // The chosen set: keys below v, and ties with v (all, or the first `quota` by index); with
  // ties "include", also the keys within tie_tolerance above v.
  if (!exact_ties) {
    const T limit = samp::selection_limit(kth, tie_tolerance);
    for (int64_t p = tid; p < pixels; p += kSelectThreads) {
      chosen[p] = image_active[p] && samp::selection_key(proj[p], insertion) <= limit;
    }
  } else {
    long long below_local = 0;
    for (int64_t p = tid; p < pixels; p += kSelectThreads) {
      below_local += image_active[p] && samp::selection_key(proj[p], insertion) < kth;
    }
    const long long below = cuda::block_sum<long long, kSelectThreads>(below_local, temp.count, &count_slot);
    const long long quota = kk - below;
    long long ties_before = 0;  // ties in earlier tiles, identical in every thread
    for (int64_t base = 0; base < pixels; base += kSelectThreads) {
      const int64_t p = base + tid;
      bool is_below = false, is_tie = false;
      if (p < pixels && image_active[p]) {
        const T key = samp::selection_key(proj[p], insertion);
        is_below = key < kth;
        is_tie = key == kth;
      }
      int tie_rank = 0, tile_ties = 0;
      TieScan(temp.scan).ExclusiveSum(is_tie ? 1 : 0, tie_rank, tile_ties);
      if (p < pixels) chosen[p] = is_below || (is_tie && ties_before + tie_rank < quota);
      ties_before += tile_ties;
      __syncthreads();  // temp.scan is reused by the next tile
    }
  }

  // IC: the L1 size of moving the chosen pixels fully, summed in samp_step.h's fixed order (this
  // thread is lane tid), and the scale that bounds it.
  T lane = T(0);
  for (int64_t p = tid; p < pixels; p += kSelectThreads) {
    if (chosen[p]) samp::add_pixel_distance(lane, image_point, image_end, p, channels, pixels);
  }
  lanes[tid] = lane;
  __syncthreads();
  for (int half = kSelectThreads / 2; half > 0; half /= 2) {
    if (tid < half) lanes[tid] += lanes[tid + half];
    __syncthreads();
  }
  const T scale = samp::step_scale(lanes[0], bound[image]);

  long long finished_local = 0;
  for (int64_t p = tid; p < pixels; p += kSelectThreads) {
    if (!chosen[p]) continue;
    attribution[image * pixels + p] += scale * proj[p];
    bool still_active = false;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t i = c * pixels + p;
      image_point[i] = samp::move_towards(image_point[i], image_end[i], scale);
      still_active |= samp::channel_active(image_point[i], image_end[i], atol, rtol);
    }
    image_active[p] = still_active;
    finished_local += !still_active;
  }
  const long long finished = cuda::block_sum<long long, kSelectThreads>(finished_local, temp.count, &count_slot);
  if (tid == 0) {
    active_count[image] = n_active - finished;
    step_count[image] += 1;
  }
}

void samp_step_cuda(at::Tensor point, const at::Tensor& end, const at::Tensor& grad,
                    at::Tensor grad_avg, at::Tensor attribution, at::Tensor active,
                    at::Tensor active_count, at::Tensor step_count, const at::Tensor& rows,
                    const at::Tensor& bound, int64_t k, double momentum, bool insertion,
                    bool exact_ties, double atol, double rtol, double tie_tolerance) {
  check_samp_step(point, end, grad, grad_avg, attribution, active, active_count, step_count, rows,
                  bound, k, exact_ties, tie_tolerance);
  TORCH_CHECK(point.is_cuda(), "point must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(point.device());
  const int64_t n_rows = rows.size(0);
  const int64_t batch = point.size(0), channels = point.size(1);
  const int64_t pixels = point.size(2) * point.size(3);
  if (n_rows == 0 || pixels == 0) return;
  TORCH_CHECK(pixels < (int64_t(1) << 31), "images of ", pixels, " pixels are too large for the CUDA samp_step (< 2^31)");
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor claims = at::zeros({batch}, point.options().dtype(at::kInt));
  samp_claim_kernel<<<static_cast<unsigned int>((n_rows + 255) / 256), 256, 0, stream>>>(
      rows.data_ptr<int64_t>(), claims.data_ptr<int>(), n_rows, batch);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor proj = at::empty({n_rows, pixels}, point.options());
  at::Tensor chosen = at::empty({n_rows, pixels}, point.options().dtype(at::kByte));
  const int64_t total = n_rows * pixels;
  const int project_blocks = cuda::grid_blocks(total, kProjectThreads);
  AT_DISPATCH_FLOATING_TYPES(point.scalar_type(), "samp_step_cuda", [&] {
    samp_project_kernel<scalar_t><<<project_blocks, kProjectThreads, 0, stream>>>(
        point.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        grad_avg.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), claims.data_ptr<int>(),
        proj.data_ptr<scalar_t>(), n_rows, batch, channels, pixels, static_cast<scalar_t>(momentum));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    samp_select_apply_kernel<scalar_t><<<static_cast<unsigned int>(n_rows), kSelectThreads, 0, stream>>>(
        point.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(), attribution.data_ptr<scalar_t>(),
        active.data_ptr<bool>(), active_count.data_ptr<int64_t>(), step_count.data_ptr<int64_t>(),
        rows.data_ptr<int64_t>(), claims.data_ptr<int>(), bound.data_ptr<scalar_t>(),
        proj.data_ptr<scalar_t>(), chosen.data_ptr<uint8_t>(), batch, channels, pixels, k, insertion,
        exact_ties, static_cast<scalar_t>(atol), static_cast<scalar_t>(rtol),
        static_cast<scalar_t>(tie_tolerance));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) { m.impl("samp_step", &samp_step_cuda); }

}  // namespace saliency_fast
