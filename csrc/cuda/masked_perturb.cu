// CUDA implementations of masked_perturb (one fused PGD step, in place on delta) and
// masked_random_fill: grid-stride elementwise kernels on the current stream, with 32-bit index
// arithmetic when x fits (cuda/launch.cuh), else 64-bit; the per-image min/max of the fill come
// from at::aminmax (no host sync).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda/launch.cuh"
#include "masked_perturb.h"

namespace saliency_fast {
namespace {

constexpr int kThreads = 256;

template <typename T, typename Index>
__global__ void masked_perturb_kernel(const T* __restrict__ x, T* __restrict__ delta,
                                      const T* __restrict__ grad, const T* __restrict__ budget,
                                      Index total, Index channels, Index pixels, T ratio,
                                      T low, T high) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<Index>(blockDim.x) * gridDim.x) {
    const Index image = i / (channels * pixels);
    const Index pixel = i % pixels;
    delta[i] = perturb::pgd_update(x[i], delta[i], grad[i], budget[image * pixels + pixel], ratio,
                                   low, high);
  }
}

template <typename T, typename Index>
__global__ void masked_random_fill_kernel(const T* __restrict__ x, const bool* __restrict__ mask,
                                          const T* __restrict__ noise, const T* __restrict__ low,
                                          const T* __restrict__ high, T* __restrict__ out,
                                          Index total, Index channels, Index pixels) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<Index>(blockDim.x) * gridDim.x) {
    const Index image = i / (channels * pixels);
    const Index pixel = i % pixels;
    out[i] = perturb::random_fill(x[i], mask[image * pixels + pixel], noise[i], low[image],
                                  high[image]);
  }
}

void masked_perturb_cuda(const at::Tensor& x, at::Tensor delta, const at::Tensor& grad,
                         const at::Tensor& budget, double step_size, double epsilon, double low,
                         double high) {
  check_masked_perturb(x, delta, grad, budget, step_size, epsilon, low, high);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  if (total == 0) return;
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  const double ratio = epsilon > 0 ? step_size / epsilon : 0.0;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_perturb_cuda", [&] {
    const auto launch = [&](auto index) {
      using Index = decltype(index);
      masked_perturb_kernel<scalar_t, Index><<<cuda::grid_blocks(total, kThreads), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
          budget.data_ptr<scalar_t>(), static_cast<Index>(total), static_cast<Index>(C),
          static_cast<Index>(HW), static_cast<scalar_t>(ratio), static_cast<scalar_t>(low),
          static_cast<scalar_t>(high));
    };
    cuda::with_index_type(total, kThreads, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor masked_random_fill_cuda(const at::Tensor& x, const at::Tensor& mask,
                                   const at::Tensor& noise) {
  check_masked_random_fill(x, mask, noise);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) return out;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto range = at::aminmax(x.reshape({B, C * HW}), /*dim=*/1);
  at::Tensor low = std::get<0>(range).contiguous();
  at::Tensor high = std::get<1>(range).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_random_fill_cuda", [&] {
    const auto launch = [&](auto index) {
      using Index = decltype(index);
      masked_random_fill_kernel<scalar_t, Index><<<cuda::grid_blocks(total, kThreads), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), mask.data_ptr<bool>(), noise.data_ptr<scalar_t>(),
          low.data_ptr<scalar_t>(), high.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          static_cast<Index>(total), static_cast<Index>(C), static_cast<Index>(HW));
    };
    cuda::with_index_type(total, kThreads, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) {
  m.impl("masked_perturb", &masked_perturb_cuda);
  m.impl("masked_random_fill", &masked_random_fill_cuda);
}

}  // namespace saliency_fast
