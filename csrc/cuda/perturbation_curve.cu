// CUDA implementation of perturbation_curve: one grid-stride kernel over every output element,
// launched on the current stream with a checked launch and no host sync. Its index arithmetic
// is 32-bit when the output fits (cuda/launch.cuh), else 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda/launch.cuh"
#include "perturbation_curve.h"

namespace saliency_fast {
namespace {

constexpr int kThreads = 256;

template <typename T, typename Index>
__global__ void perturbation_curve_kernel(const T* __restrict__ start,
                                          const T* __restrict__ finish,
                                          const int64_t* __restrict__ ranks,
                                          const int64_t* __restrict__ counts,
                                          T* __restrict__ out, Index S, Index C, Index HW,
                                          Index total) {
  const Index stride = static_cast<Index>(blockDim.x) * gridDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    // out is (B, S, C, HW): unravel i into (b, s, c, p).
    const Index p = i % HW;
    const Index c = (i / HW) % C;
    const Index s = (i / (HW * C)) % S;
    const Index b = i / (HW * C * S);
    const Index src = (b * C + c) * HW + p;
    out[i] = curve::curve_value(start[src], finish[src], ranks[b * HW + p], counts[s]);
  }
}

at::Tensor perturbation_curve_cuda(const at::Tensor& start, const at::Tensor& finish,
                                   const at::Tensor& ranks, const at::Tensor& counts) {
  check_perturbation_curve(start, finish, ranks, counts);
  const c10::cuda::CUDAGuard device_guard(start.device());
  const int64_t B = start.size(0), C = start.size(1), H = start.size(2), W = start.size(3);
  const int64_t S = counts.size(0);
  at::Tensor out = at::empty({B, S, C, H, W}, start.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int blocks = cuda::grid_blocks(total, kThreads);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, start.scalar_type(),
                                  "perturbation_curve_cuda", [&] {
    const auto launch = [&](auto index) {
      using Index = decltype(index);
      perturbation_curve_kernel<scalar_t, Index><<<blocks, kThreads, 0, stream>>>(
          start.data_ptr<scalar_t>(), finish.data_ptr<scalar_t>(), ranks.data_ptr<int64_t>(),
          counts.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), static_cast<Index>(S),
          static_cast<Index>(C), static_cast<Index>(H * W), static_cast<Index>(total));
    };
    cuda::with_index_type(total, kThreads, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) {
  m.impl("perturbation_curve", &perturbation_curve_cuda);
}

}  // namespace saliency_fast
