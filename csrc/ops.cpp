// Every operator schema of saliency_fast, defined once. Backends register implementations
// in csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL; Python registers fakes
// (saliency_fast/ops.py) so the ops trace under torch.compile.
#include <torch/library.h>

TORCH_LIBRARY(saliency_fast, m) {
  // One fused SAMP step for the images listed in `rows` (grad row i belongs to image rows[i]):
  // momentum, projection, k-th selection among active pixels, IC scaling, in-place update of
  // point / grad_avg / attribution / active / active_count, and step_count += 1 for every
  // image that still had active pixels (so callers never read the device to count steps).
  // tie_tolerance t (ties "include" only): keys within t above the k-th key move too.
  // `rows` must be distinct indices in [0, B): the CPU op raises otherwise; the CUDA op, which
  // cannot raise without a host sync, leaves every image named by a bad row untouched.
  m.def(
      "samp_step(Tensor(a!) point, Tensor end, Tensor grad, Tensor(b!) grad_avg, "
      "Tensor(c!) attribution, Tensor(d!) active, Tensor(e!) active_count, Tensor(f!) step_count, "
      "Tensor rows, "
      "Tensor bound, int k, float momentum=1.0, bool insertion=False, bool exact_ties=False, "
      "float atol=1e-08, float rtol=1e-05, float tie_tolerance=0.0) -> ()");
  // The perturbed images of many deletion/insertion curve points in one pass:
  // out[b, s, c, p] = finish[b, c, p] if ranks[b, p] < counts[s] else start[b, c, p].
  m.def("perturbation_curve(Tensor start, Tensor finish, Tensor ranks, Tensor counts) -> Tensor");
}

// SCAAT / Saliency Guided Training ops (scaat.md), defined in a fragment of the same library.
TORCH_LIBRARY_FRAGMENT(saliency_fast, m) {
  // Per-image attack budget (B, H, W) from a non-negative saliency map (B, H, W); mode is
  // "mass" (ε on the lowest-saliency pixels holding <= rho of the mass), "topk" (ε on the
  // floor(k·H·W) lowest), "inverse" (ε·(1 − rank)^gamma) or "uniform" (ε everywhere).
  m.def(
      "saliency_budget(Tensor saliency, str mode, float epsilon, float rho, float k, "
      "float gamma) -> Tensor");
  // One fused PGD step, in place on delta (B, C, H, W): delta ← clamp(delta +
  // (step_size/epsilon)·budget·sign(grad), −budget, budget), then x + delta clamped to [low, high].
  m.def(
      "masked_perturb(Tensor x, Tensor(a!) delta, Tensor grad, Tensor budget, float step_size, "
      "float epsilon, float low, float high) -> ()");
  // Saliency Guided Training's masking: where mask (B, H, W) is set, every channel becomes
  // min + noise·(max − min) of its image; elsewhere x. Returns a new tensor.
  m.def("masked_random_fill(Tensor x, Tensor mask, Tensor noise) -> Tensor");
}
