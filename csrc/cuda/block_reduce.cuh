#pragma once
// The one block-wide reduction of the CUDA kernels: cub::BlockReduce's sum (its default
// algorithm, so each kernel's summation order is the one it always had), broadcast to every
// thread of the block. The SAMP IC sum does not use it: its fixed lane order is part of the
// CPU/CUDA bit-identity contract and is written out in samp_step.cu (csrc/samp_step.h).
#include <cub/block/block_reduce.cuh>

namespace saliency_fast {
namespace cuda {

template <typename V, int kThreads>
using BlockSum = cub::BlockReduce<V, kThreads>;

// The sum of every thread's `local`, in every thread. `storage` and `slot` are the block's
// shared memory; both may be reused once this returns.
template <typename V, int kThreads>
__device__ V block_sum(V local, typename BlockSum<V, kThreads>::TempStorage& storage, V* slot) {
  const V total = BlockSum<V, kThreads>(storage).Sum(local);
  if (threadIdx.x == 0) *slot = total;
  __syncthreads();
  const V result = *slot;
  __syncthreads();
  return result;
}

}  // namespace cuda
}  // namespace saliency_fast
