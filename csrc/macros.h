#pragma once
// Lets one inline function serve both the CPU (.cpp) and the CUDA (.cu) implementation, so
// the CPU tests exercise exactly the per-element arithmetic the GPU kernels run.
#ifdef __CUDACC__
#define SF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SF_HOST_DEVICE inline
#endif
