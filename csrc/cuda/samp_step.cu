// CUDA implementation of samp_step. Two launches on the current stream, no host sync:
//  1. samp_project_kernel (grid-stride over rows × pixels): momentum and the projection;
//  2. samp_select_apply_kernel (one block per image): radix select of the k-th key among the
//     active pixels (8 bits per pass over order-preserving bit patterns), the chosen set under
//     either tie policy, the step's L1 size, IC scaling, and the in-place update.
// Every thread of a block owns the pixels p ≡ threadIdx.x (mod blockDim.x) in every pass, so a
// thread only ever reads back what it wrote itself into the per-row workspaces.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "ordered_bits.h"
#include "samp_step.h"
#include "samp_step_checks.h"

namespace saliency_fast {
namespace {

constexpr int kProjectThreads = 256;
constexpr int kSelectThreads = 512;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;

template <typename T>
__global__ void samp_project_kernel(const T* __restrict__ point, const T* __restrict__ end,
                                    const T* __restrict__ grad, T* __restrict__ grad_avg,
                                    const int64_t* __restrict__ rows, T* __restrict__ proj,
                                    int64_t n_rows, int64_t batch, int64_t channels, int64_t pixels,
                                    T momentum) {
  const int64_t total = n_rows * pixels;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / pixels, p = i % pixels;
    const int64_t image = rows[row];
    if (image < 0 || image >= batch) continue;  // invalid rows are skipped (no host check on CUDA)
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

// Broadcasts a value reduced into thread 0 to the whole block.
template <typename V>
__device__ V broadcast(V value, V* slot) {
  if (threadIdx.x == 0) *slot = value;
  __syncthreads();
  const V out = *slot;
  __syncthreads();
  return out;
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads) samp_select_apply_kernel(
    T* __restrict__ point, const T* __restrict__ end, T* __restrict__ attribution,
    bool* __restrict__ active, int64_t* __restrict__ active_count, int64_t* __restrict__ step_count,
    const int64_t* __restrict__ rows, const T* __restrict__ bound, const T* __restrict__ proj_all,
    uint8_t* __restrict__ chosen_all, int64_t batch, int64_t channels, int64_t pixels, int64_t k,
    bool insertion, bool exact_ties, T atol, T rtol) {
  using Bits = OrderedBits<T>;
  using U = typename Bits::U;
  using CountReduce = cub::BlockReduce<long long, kSelectThreads>;
  using ValueReduce = cub::BlockReduce<T, kSelectThreads>;
  using TieScan = cub::BlockScan<int, kSelectThreads>;
  __shared__ union {
    typename CountReduce::TempStorage count;
    typename ValueReduce::TempStorage value;
    typename TieScan::TempStorage scan;
  } temp;
  __shared__ unsigned long long histogram[kRadixBins];
  __shared__ long long count_slot;
  __shared__ int digit_slot;
  __shared__ T value_slot;

  const int64_t row = blockIdx.x;
  const int64_t image = rows[row];
  if (image < 0 || image >= batch) return;
  const int tid = threadIdx.x;
  const T* proj = proj_all + row * pixels;
  uint8_t* chosen = chosen_all + row * pixels;
  bool* image_active = active + image * pixels;
  T* image_point = point + image * channels * pixels;
  const T* image_end = end + image * channels * pixels;

  long long local = 0;
  for (int64_t p = tid; p < pixels; p += kSelectThreads) local += image_active[p];
  const long long n_active = broadcast<long long>(CountReduce(temp.count).Sum(local), &count_slot);
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
      if ((u & mask) == desired) atomicAdd(&histogram[(u >> shift) & (kRadixBins - 1)], 1ULL);
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

  // The chosen set: keys below v, and ties with v (all, or the first `quota` by index).
  if (!exact_ties) {
    for (int64_t p = tid; p < pixels; p += kSelectThreads) {
      chosen[p] = image_active[p] && samp::selection_key(proj[p], insertion) <= kth;
    }
  } else {
    long long below_local = 0;
    for (int64_t p = tid; p < pixels; p += kSelectThreads) {
      below_local += image_active[p] && samp::selection_key(proj[p], insertion) < kth;
    }
    const long long below = broadcast<long long>(CountReduce(temp.count).Sum(below_local), &count_slot);
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

  // IC: the L1 size of moving the chosen pixels fully, and the scale that bounds it.
  T l1_local = T(0);
  for (int64_t p = tid; p < pixels; p += kSelectThreads) {
    if (!chosen[p]) continue;
    for (int64_t c = 0; c < channels; ++c) {
      l1_local += samp::distance(image_point[c * pixels + p], image_end[c * pixels + p]);
    }
  }
  const T step_l1 = broadcast<T>(ValueReduce(temp.value).Sum(l1_local), &value_slot);
  const T scale = samp::step_scale(step_l1, bound[image]);

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
  const long long finished = CountReduce(temp.count).Sum(finished_local);
  if (tid == 0) {
    active_count[image] = n_active - finished;
    step_count[image] += 1;
  }
}

void samp_step_cuda(at::Tensor point, const at::Tensor& end, const at::Tensor& grad,
                    at::Tensor grad_avg, at::Tensor attribution, at::Tensor active,
                    at::Tensor active_count, at::Tensor step_count, const at::Tensor& rows,
                    const at::Tensor& bound, int64_t k, double momentum, bool insertion,
                    bool exact_ties, double atol, double rtol) {
  check_samp_step(point, end, grad, grad_avg, attribution, active, active_count, step_count, rows,
                  bound, k);
  TORCH_CHECK(point.is_cuda(), "point must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(point.device());
  const int64_t n_rows = rows.size(0);
  const int64_t batch = point.size(0), channels = point.size(1);
  const int64_t pixels = point.size(2) * point.size(3);
  if (n_rows == 0 || pixels == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor proj = at::empty({n_rows, pixels}, point.options());
  at::Tensor chosen = at::empty({n_rows, pixels}, point.options().dtype(at::kByte));
  const int64_t total = n_rows * pixels;
  const int project_blocks =
      static_cast<int>(std::min<int64_t>((total + kProjectThreads - 1) / kProjectThreads, 65535));
  AT_DISPATCH_FLOATING_TYPES(point.scalar_type(), "samp_step_cuda", [&] {
    samp_project_kernel<scalar_t><<<project_blocks, kProjectThreads, 0, stream>>>(
        point.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        grad_avg.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), proj.data_ptr<scalar_t>(), n_rows,
        batch, channels, pixels, static_cast<scalar_t>(momentum));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    samp_select_apply_kernel<scalar_t><<<static_cast<unsigned int>(n_rows), kSelectThreads, 0, stream>>>(
        point.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(), attribution.data_ptr<scalar_t>(),
        active.data_ptr<bool>(), active_count.data_ptr<int64_t>(), step_count.data_ptr<int64_t>(),
        rows.data_ptr<int64_t>(), bound.data_ptr<scalar_t>(), proj.data_ptr<scalar_t>(),
        chosen.data_ptr<uint8_t>(), batch, channels, pixels, k, insertion, exact_ties,
        static_cast<scalar_t>(atol), static_cast<scalar_t>(rtol));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) { m.impl("samp_step", &samp_step_cuda); }

}  // namespace saliency_fast
