// C++ test of the operators through the dispatcher, as a libtorch user would call them.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <vector>

#include "ordered_bits.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

// One deletion step on a 1×1×2×2 image: the pixel with the smallest projection moves fully.
void test_samp_step_moves_the_lowest_projection() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("saliency_fast::samp_step", "")
                .typed<void(at::Tensor, const at::Tensor&, const at::Tensor&, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor, at::Tensor, const at::Tensor&, const at::Tensor&,
                            int64_t, double, bool, bool, double, double, double)>();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto point = torch::tensor({1.0, 2.0, 3.0, 4.0}, f64).view({1, 1, 2, 2});
  auto end = torch::zeros({1, 1, 2, 2}, f64);
  auto grad = torch::tensor({1.0, 1.0, -1.0, 1.0}, f64).view({1, 1, 2, 2});
  // proj = grad · (end − point) = {-1, -2, 3, -4}: deletion moves pixel 3 first.
  auto grad_avg = torch::zeros_like(point);
  auto attribution = torch::zeros({1, 2, 2}, f64);
  auto active = torch::ones({1, 2, 2}, torch::kBool);
  auto count = torch::full({1}, 4, torch::kLong);
  auto steps = torch::zeros({1}, torch::kLong);
  auto rows = torch::zeros({1}, torch::kLong);
  auto bound = torch::full({1}, std::numeric_limits<double>::infinity(), f64);
  op.call(point, end, grad, grad_avg, attribution, active, count, steps, rows, bound, 1, 1.0, false,
          false, 1e-8, 1e-5, 0.0);
  expect(point.view(-1)[3].item<double>() == 0.0, "the chosen pixel lands on its end value");
  expect(point.view(-1)[0].item<double>() == 1.0, "other pixels stay");
  expect(attribution.view(-1)[3].item<double>() == -4.0, "attribution += proj");
  expect(count.item<int64_t>() == 3, "active count drops by one");
  expect(steps.item<int64_t>() == 1, "the step is counted");
  expect(!active.view(-1)[3].item<bool>(), "the moved pixel is inactive");

  // IC: next, pixel 1 (proj −2, |delta| = 2) is chosen; bound 1 moves it half way, 2 → 1.
  bound.fill_(1.0);
  op.call(point, end, grad, grad_avg, attribution, active, count, steps, rows, bound, 1, 1.0, false,
          false, 1e-8, 1e-5, 0.0);
  expect(point.view(-1)[1].item<double>() == 1.0, "IC scales the move to the bound");
  expect(attribution.view(-1)[1].item<double>() == -1.0, "attribution += scale · proj");
  expect(active.view(-1)[1].item<bool>() && count.item<int64_t>() == 3, "a partial move stays active");
}

// The radix selections (CPU and CUDA) rest on to_ordered being strictly increasing and
// invertible over every canonical key: negatives, denormals, +0, infinities.
template <typename T>
void test_ordered_bits_keep_the_order() {
  using limits = std::numeric_limits<T>;
  const std::vector<T> increasing = {-limits::infinity(), -limits::max(), T(-2.5), T(-1), -limits::min(),
                                     -limits::denorm_min(), T(0), limits::denorm_min(), limits::min(),
                                     T(1e-3), T(1), T(3), limits::max(), limits::infinity()};
  for (size_t i = 0; i < increasing.size(); ++i) {
    expect(saliency_fast::from_ordered<T>(saliency_fast::to_ordered(increasing[i])) == increasing[i],
           "from_ordered inverts to_ordered");
    if (i > 0) {
      expect(saliency_fast::to_ordered(increasing[i - 1]) < saliency_fast::to_ordered(increasing[i]),
             "to_ordered is strictly increasing");
    }
  }
}

}  // namespace

int main() {
  test_samp_step_moves_the_lowest_projection();
  test_ordered_bits_keep_the_order<float>();
  test_ordered_bits_keep_the_order<double>();
  if (failures == 0) std::cout << "3 passed, 0 failed\n";
  return failures == 0 ? 0 : 1;
}
