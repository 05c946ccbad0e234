#pragma once
// Launch sizes of the grid-stride kernels, shared by every csrc/cuda/*.cu: the grid is capped at
// 65535 blocks (each thread then strides over the rest), and a kernel may index in 32 bits only
// when every index, and the grid-stride step past the last one, fits in int32 (a 64-bit division
// is a long emulated sequence on the GPU).
#include <algorithm>
#include <cstdint>
#include <limits>

namespace saliency_fast {
namespace cuda {

constexpr int64_t kMaxGridBlocks = 65535;

// Blocks of `threads` threads for `total` grid-stride elements (at least 1 element).
inline int grid_blocks(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, kMaxGridBlocks));
}

// Whether a grid of at most kMaxGridBlocks blocks of `threads` threads may stride over `total`
// elements with int32 indices.
inline bool fits_int32(int64_t total, int threads) {
  return total <= std::numeric_limits<int32_t>::max() - kMaxGridBlocks * threads;
}

// Calls launch(int32_t(0)) when the indices fit in int32 (fits_int32), else launch(int64_t(0)):
// `launch` instantiates its kernel for the index type of its argument.
template <typename Launch>
void with_index_type(int64_t total, int threads, const Launch& launch) {
  if (fits_int32(total, threads)) launch(int32_t(0)); else launch(int64_t(0));
}

}  // namespace cuda
}  // namespace saliency_fast
