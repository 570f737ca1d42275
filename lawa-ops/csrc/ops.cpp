// libtorch operations tch does not expose, behind a C interface for Rust: AdamW through the
// multi-tensor `_foreach_` ops (the arithmetic of torch.optim.AdamW(foreach=True)) and through
// `_fused_adamw_` (fused=True), the multi-tensor lerp an EMA needs, gradient clipping over all
// gradients at once, and pinning host memory
// without libtorch's deprecation warnings. On CUDA each is a few
// kernels over all tensors at once instead of several per tensor. Tensors arrive as the
// `at::Tensor*` handles tch passes to torch-sys; C++ exceptions come back as messages.

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "lawa_guarded.h"

namespace {

std::vector<at::Tensor> list(at::Tensor* const* tensors, int count) {
  std::vector<at::Tensor> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) out.push_back(*tensors[i]);
  return out;
}

}  // namespace

extern "C" {

// The scalars of one AdamW step, computed by the caller (so that every implementation uses the
// same ones): `decay_factor` = 1 - lr * weight_decay, `step_size` = -lr / (1 - beta1^t),
// `bias_correction2_sqrt` = sqrt(1 - beta2^t).
struct lawa_adamw_scalars {
  double beta1;
  double beta2;
  double eps;
  double decay_factor;
  double step_size;
  double bias_correction2_sqrt;
};

// One AdamW step over `count` parameters with the `_foreach_` ops; `decay[i]` says whether
// parameter i gets weight decay. The order of operations is torch's `_multi_tensor_adamw`.
int lawa_foreach_adamw(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                       at::Tensor* const* exp_avg_sqs, const int* decay, int count,
                       const lawa_adamw_scalars* s, char** error) {
  return lawa_guarded(error, [&] {
    c10::NoGradGuard no_grad;
    if (count == 0) return;  // the _foreach_ ops refuse empty lists
    auto p = list(params, count), g = list(grads, count);
    auto m = list(exp_avgs, count), v = list(exp_avg_sqs, count);
    std::vector<at::Tensor> decayed;
    for (int i = 0; i < count; ++i)
      if (decay[i] != 0) decayed.push_back(p[i]);
    if (!decayed.empty() && s->decay_factor != 1.0) at::_foreach_mul_(decayed, s->decay_factor);
    at::_foreach_lerp_(m, g, 1.0 - s->beta1);
    at::_foreach_mul_(v, s->beta2);
    at::_foreach_addcmul_(v, g, g, 1.0 - s->beta2);
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, s->bias_correction2_sqrt);
    at::_foreach_add_(denom, s->eps);
    at::_foreach_addcdiv_(p, m, denom, s->step_size);
  });
}

// One AdamW step with libtorch's fused kernel (one pass over each tensor). `step` is the step
// number after this update (1 for the first).
int lawa_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                     at::Tensor* const* exp_avg_sqs, int count, double lr, double beta1, double beta2,
                     double weight_decay, double eps, double step, char** error) {
  return lawa_guarded(error, [&] {
    c10::NoGradGuard no_grad;
    if (count == 0) return;
    auto p = list(params, count);
    auto steps_tensor = at::full({}, step, p[0].options().dtype(at::kFloat));
    std::vector<at::Tensor> steps(count, steps_tensor);
    at::_fused_adamw_(p, list(grads, count), list(exp_avgs, count), list(exp_avg_sqs, count), {},
                      steps, lr, beta1, beta2, weight_decay, eps, false, false);
  });
}

// selves[i] = lerp(selves[i], ends[i], weight), for every i at once.
int lawa_foreach_lerp(at::Tensor* const* selves, at::Tensor* const* ends, int count, double weight,
                      char** error) {
  return lawa_guarded(error, [&] {
    c10::NoGradGuard no_grad;
    if (count == 0) return;
    auto a = list(selves, count);
    at::_foreach_lerp_(a, list(ends, count), weight);
  });
}

// torch.nn.utils.clip_grad_norm_'s multi-tensor path (the one it takes on CUDA): the norm of
// each gradient with `_foreach_norm`, their norm, and every gradient scaled in place by
// min(1, max_norm / (total + 1e-6)) with `_foreach_mul_`, without reading anything back to the
// host. `*total` = the norm before clipping (a 0-dim fp32 tensor on the gradients' device).
int lawa_foreach_clip_grad_norm(at::Tensor* const* grads, int count, double max_norm, at::Tensor** total,
                                char** error) {
  return lawa_guarded(error, [&] {
    c10::NoGradGuard no_grad;
    if (count == 0) throw std::invalid_argument("no gradients to clip");
    auto g = list(grads, count);
    auto norms = at::_foreach_norm(g, 2.0);
    auto norm = at::linalg_vector_norm(at::stack(norms), 2.0);
    // Python's `max_norm / t` is `t.reciprocal() * max_norm` (Tensor.__rtruediv__).
    auto coef = at::clamp_max(at::reciprocal(norm + 1e-6) * max_norm, 1.0);
    at::_foreach_mul_(g, coef);
    *total = new at::Tensor(norm);
  });
}

// `*out` = a copy of `tensor` in pinned (page-locked) host memory, for an asynchronous copy to
// the GPU. tch's pin_memory always passes a device, which libtorch 2.11 deprecates with two
// warnings on every call.
int lawa_pin_memory(const at::Tensor* tensor, at::Tensor** out, char** error) {
  return lawa_guarded(error, [&] { *out = new at::Tensor(tensor->pin_memory()); });
}

// `*out` = `bytes` uninitialized bytes (uint8) of pinned host memory, allocated as such (no
// pageable buffer first, no copy).
int lawa_empty_pinned(int64_t bytes, at::Tensor** out, char** error) {
  return lawa_guarded(error, [&] {
    *out = new at::Tensor(at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true)));
  });
}

}  // extern "C"
