// Every operator schema of saliency_fast, defined once. Backends register implementations
// in csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL; Python registers fakes
// (saliency_fast/ops.py) so the ops trace under torch.compile.
#include <torch/library.h>

TORCH_LIBRARY(saliency_fast, m) {
  // One fused SAMP step for the images listed in `rows` (grad row i belongs to image rows[i]):
  // momentum, projection, k-th selection among active pixels, IC scaling, in-place update of
  // point / grad_avg / attribution / active / active_count.
  m.def(
      "samp_step(Tensor(a!) point, Tensor end, Tensor grad, Tensor(b!) grad_avg, "
      "Tensor(c!) attribution, Tensor(d!) active, Tensor(e!) active_count, Tensor rows, "
      "Tensor bound, int k, float momentum, bool insertion, bool exact_ties, float atol, "
      "float rtol) -> ()");
}
