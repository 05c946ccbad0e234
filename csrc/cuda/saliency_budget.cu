// CUDA implementation of saliency_budget. "topk" and "mass": one block per image finds the
// threshold by a binary search over the order-preserving bit pattern of the keys (32 or 64
// rounds of a block-wide count/sum, no sort, no host sync). "inverse" needs every rank: the
// ordering keys, a segmented at::sort plus cummax for ties, then one scatter kernel. All on the
// current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda/block_reduce.cuh"
#include "cuda/launch.cuh"
#include "ordered_bits.h"
#include "saliency_budget.h"

namespace saliency_fast {
namespace {

constexpr int kThreads = 256;

// One block per image. topk: the smallest U with #{key <= U} >= m. mass: the largest U with
// Σ_{key <= U} key <= rho·Σ s. Pixels with key <= U get epsilon.
template <typename T>
__global__ void threshold_budget_kernel(const T* __restrict__ saliency, T* __restrict__ out,
                                        int64_t n, bool mass, int64_t m, double rho, T epsilon) {
  using Bits = OrderedBits<T>;
  using U = typename Bits::U;
  __shared__ typename cuda::BlockSum<double, kThreads>::TempStorage storage;
  __shared__ double shared;
  const int64_t image = blockIdx.x;
  const T* s = saliency + image * n;
  T* o = out + image * n;

  double limit = 0.0;
  if (mass) {
    double local = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) local += static_cast<double>(s[i]);
    limit = rho * cuda::block_sum<double, kThreads>(local, storage, &shared);
  }
  U lo = 0, hi = ~U(0);
  if (mass) {
    while (lo < hi) {
      const U mid = hi - (hi - lo) / 2;  // upper midpoint: lo < mid <= hi
      double local = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const T key = order_key(s[i]);
        if (to_ordered(key) <= mid) local += static_cast<double>(key);
      }
      if (cuda::block_sum<double, kThreads>(local, storage, &shared) <= limit) lo = mid; else hi = mid - 1;
    }
  } else {
    while (lo < hi) {
      const U mid = lo + (hi - lo) / 2;
      double local = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        local += to_ordered(order_key(s[i])) <= mid ? 1.0 : 0.0;
      }
      if (cuda::block_sum<double, kThreads>(local, storage, &shared) >= static_cast<double>(m)) hi = mid; else lo = mid + 1;
    }
  }
  const bool any = mass ? (limit >= 0.0) : (m > 0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const bool inside = any && to_ordered(order_key(s[i])) <= lo;
    o[i] = inside ? epsilon : T(0);
  }
}

// The selections' ordering keys (order_key: NaN last, −0 as +0), elementwise.
template <typename T>
__global__ void order_keys_kernel(const T* __restrict__ values, T* __restrict__ keys, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    keys[i] = order_key(values[i]);
  }
}

// "inverse": out[b, order[b, j]] = epsilon·(1 − first[b, j]/(n − 1))^gamma.
template <typename T>
__global__ void inverse_budget_kernel(const int64_t* __restrict__ order,
                                      const int64_t* __restrict__ first, T* __restrict__ out,
                                      int64_t total, int64_t n, double epsilon, double gamma) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t image = i / n;
    out[image * n + order[i]] = budget::inverse_budget<T>(first[i], n, epsilon, gamma);
  }
}

at::Tensor inverse_budget_cuda(const at::Tensor& saliency, int64_t B, int64_t n, double epsilon,
                               double gamma) {
  at::Tensor flat = saliency.reshape({B, n});
  at::Tensor keys = at::empty_like(flat);
  const int64_t total = B * n;
  const int blocks = cuda::grid_blocks(total, kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(saliency.scalar_type(), "order_keys_cuda", [&] {
    order_keys_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(flat.data_ptr<scalar_t>(),
                                                                keys.data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto sorted = at::sort(keys, /*dim=*/1);
  const at::Tensor& values = std::get<0>(sorted);
  at::Tensor order = std::get<1>(sorted).contiguous();
  at::Tensor position = at::arange(n, flat.options().dtype(at::kLong)).expand({B, n});
  at::Tensor starts = at::ones({B, n}, flat.options().dtype(at::kBool));
  if (n > 1) {
    starts.narrow(1, 1, n - 1).copy_(values.narrow(1, 1, n - 1) != values.narrow(1, 0, n - 1));
  }
  at::Tensor first = std::get<0>(at::cummax(at::where(starts, position, at::zeros_like(position)), 1))
                         .contiguous();
  at::Tensor out = at::empty_like(saliency);
  AT_DISPATCH_FLOATING_TYPES(saliency.scalar_type(), "inverse_budget_cuda", [&] {
    inverse_budget_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        order.data_ptr<int64_t>(), first.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), total, n,
        epsilon, gamma);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor saliency_budget_cuda(const at::Tensor& saliency, c10::string_view mode_name,
                                double epsilon, double rho, double k, double gamma) {
  check_saliency_budget(saliency, epsilon, rho, k, gamma);
  const budget::Mode mode = parse_budget_mode(mode_name);
  c10::cuda::CUDAGuard guard(saliency.device());
  const int64_t B = saliency.size(0), n = saliency.size(1) * saliency.size(2);
  if (B == 0 || n == 0) return at::empty_like(saliency);
  if (budget::is_everything(mode, rho)) return at::full_like(saliency, epsilon);
  if (mode == budget::Mode::kInverse) return inverse_budget_cuda(saliency, B, n, epsilon, gamma);
  TORCH_CHECK(B <= 2147483647LL, "saliency has too many images for one launch: ", B);
  at::Tensor out = at::empty_like(saliency);
  const bool mass = mode == budget::Mode::kMass;
  const int64_t m = budget::topk_count(k, n);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(saliency.scalar_type(), "saliency_budget_cuda", [&] {
    threshold_budget_kernel<scalar_t><<<static_cast<unsigned int>(B), kThreads, 0, stream>>>(
        saliency.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, mass, m, rho,
        static_cast<scalar_t>(epsilon));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) { m.impl("saliency_budget", &saliency_budget_cuda); }

}  // namespace saliency_fast
