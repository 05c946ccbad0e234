// Every operator schema of saliency_fast, defined once, in one TORCH_LIBRARY block, and the one
// autograd rule they share. Backends register implementations in csrc/cpu/*.cpp and
// csrc/cuda/*.cu with TORCH_LIBRARY_IMPL; Python registers the fakes once (saliency_fast/_fakes.py)
// so the ops trace under torch.compile, and wraps them (saliency_fast/ops.py, which validates the
// scalars for the user; the kernels' TORCH_CHECKs are the native guard).
//
// No op is differentiable: each is a selection, a threshold or an in-place state update that
// its callers run between model calls. Their Autograd kernel (below) says so instead of letting
// a gradient silently vanish: with grad mode on, a tensor argument that requires grad is refused
// with an error naming it; under torch.no_grad(), or with detached tensors, the op runs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

namespace saliency_fast {
namespace {

void refuse_grad(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  if (c10::GradMode::is_enabled()) {
    const size_t first = stack->size() - arguments.size();
    for (size_t i = 0; i < arguments.size(); ++i) {
      const c10::IValue& value = (*stack)[first + i];
      TORCH_CHECK(!(value.isTensor() && value.toTensor().requires_grad()), op.schema().name(),
                  " is not differentiable, but its argument ", arguments[i].name(),
                  " requires grad: call it under torch.no_grad() or pass ", arguments[i].name(),
                  ".detach()");
    }
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

}  // namespace
}  // namespace saliency_fast

TORCH_LIBRARY(saliency_fast, m) {
  // One fused SAMP step for the images listed in `rows` (grad row i belongs to image rows[i]):
  // momentum, projection, k-th selection among active pixels, IC scaling, in-place update of
  // point / grad_avg / attribution / active / active_count, and step_count += 1 for every
  // image that still had active pixels (so callers never read the device to count steps).
  // tie_tolerance t (ties "include" only): keys within t above the k-th key move too.
  // `rows` must be distinct indices in [0, B): the CPU op raises otherwise; the CUDA op, which
  // cannot raise without a host sync, leaves every image named by a bad row untouched.
  // atol/rtol default to saliency_fast.ops.ATOL/RTOL (tested). Not differentiable.
  m.def(
      "samp_step(Tensor(a!) point, Tensor end, Tensor grad, Tensor(b!) grad_avg, "
      "Tensor(c!) attribution, Tensor(d!) active, Tensor(e!) active_count, Tensor(f!) step_count, "
      "Tensor rows, "
      "Tensor bound, int k, float momentum=1.0, bool insertion=False, bool exact_ties=False, "
      "float atol=1e-08, float rtol=1e-05, float tie_tolerance=0.0) -> ()");
  // The perturbed images of many deletion/insertion curve points in one pass:
  // out[b, s, c, p] = finish[b, c, p] if ranks[b, p] < counts[s] else start[b, c, p].
  // Not differentiable.
  m.def("perturbation_curve(Tensor start, Tensor finish, Tensor ranks, Tensor counts) -> Tensor");
  // SCAAT / Saliency Guided Training (scaat.md).
  // Per-image attack budget (B, H, W) from a non-negative saliency map (B, H, W); mode is
  // "mass" (ε on the lowest-saliency pixels holding <= rho of the mass), "topk" (ε on the
  // floor(k·H·W) lowest), "inverse" (ε·(1 − rank)^gamma) or "uniform" (ε everywhere).
  // Not differentiable (piecewise constant in the saliency).
  m.def(
      "saliency_budget(Tensor saliency, str mode, float epsilon, float rho, float k, "
      "float gamma) -> Tensor");
  // One fused PGD step, in place on delta (B, C, H, W): delta ← clamp(delta +
  // (step_size/epsilon)·budget·sign(grad), −budget, budget), then x + delta clamped to [low, high].
  // Not differentiable.
  m.def(
      "masked_perturb(Tensor x, Tensor(a!) delta, Tensor grad, Tensor budget, float step_size, "
      "float epsilon, float low, float high) -> ()");
  // Saliency Guided Training's masking: where mask (B, H, W) is set, every channel becomes
  // min + noise·(max − min) of its image; elsewhere x. Returns a new tensor. Not differentiable.
  m.def("masked_random_fill(Tensor x, Tensor mask, Tensor noise) -> Tensor");
}

TORCH_LIBRARY_IMPL(saliency_fast, Autograd, m) {
  for (const char* name :
       {"samp_step", "perturbation_curve", "saliency_budget", "masked_perturb", "masked_random_fill"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&saliency_fast::refuse_grad>());
  }
}
