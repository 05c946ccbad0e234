// The Python module saliency_fast._C: importing it registers the operators (TORCH_LIBRARY
// in ops.cpp and the backend files); it also carries the build information.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#ifndef SALIENCY_FAST_VERSION
#define SALIENCY_FAST_VERSION "unknown"
#endif

namespace {
pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = SALIENCY_FAST_VERSION;
  pybind11::list backends;
  backends.append("cpu");
#ifdef WITH_CUDA
  backends.append("cuda");
#endif
  info["backends"] = backends;
  info["threads"] = at::get_num_threads();
  info["parallel"] = at::get_parallel_info();
  return info;
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "saliency_fast native operators (registered as torch.ops.saliency_fast.*)";
  m.def("build_info", &build_info, "version, compiled backends and threads of this build");
}
