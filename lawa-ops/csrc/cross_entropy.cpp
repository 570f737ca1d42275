// Per-token cross-entropy over a language model's logits as one autograd function: on CUDA,
// lawa's two kernels (kernels/cross_entropy.cu), which read the logits in their own dtype and
// write the gradient in it; elsewhere the same arithmetic with ATen ops (the reference the
// kernels are tested against). See lawa_ops::cross_entropy for the contract.

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "cross_entropy.h"
#include "lawa_guarded.h"
#include "nvrtc_module.h"

namespace lawa {

int cross_entropy_vectorized(const at::Tensor& logits, const at::Tensor& other) {
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  return (logits.size(1) * logits.element_size()) % 16 == 0 && aligned(logits) && aligned(other) ? 1 : 0;
}

void check_cross_entropy_inputs(const at::Tensor& logits, const at::Tensor& targets, int64_t vocab) {
  if (logits.dim() != 2) throw std::invalid_argument("logits must be [rows, columns], got " + std::to_string(logits.dim()) + " dimensions");
  auto dtype = logits.scalar_type();
  if (dtype != at::kBFloat16 && dtype != at::kFloat)
    throw std::invalid_argument(std::string("logits must be bf16 or fp32, got ") + c10::toString(dtype));
  if (targets.dim() != 1 || targets.size(0) != logits.size(0))
    throw std::invalid_argument("targets must be [rows] with rows = " + std::to_string(logits.size(0)) +
                                ", got " + std::to_string(targets.dim()) + " dimensions of " +
                                std::to_string(targets.numel()) + " values");
  if (targets.scalar_type() != at::kLong) throw std::invalid_argument("targets must be int64");
  if (targets.device() != logits.device()) throw std::invalid_argument("targets and logits on different devices");
  if (vocab < 1 || vocab > logits.size(1))
    throw std::invalid_argument("vocab = " + std::to_string(vocab) + " outside [1, " +
                                std::to_string(logits.size(1)) + "] (the logits' columns)");
  if (logits.size(0) > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("more than 2^31 - 1 rows");
}

}  // namespace lawa

namespace {

// The forward or backward kernel for logits of `dtype` (bf16; fp32 otherwise).
const char* kernel_name(at::ScalarType dtype, bool forward) {
  bool bf16 = dtype == at::kBFloat16;
  if (forward) return bf16 ? "lawa_ce_forward_bf16" : "lawa_ce_forward_f32";
  return bf16 ? "lawa_ce_backward_bf16" : "lawa_ce_backward_f32";
}

// Every kernel kernel_name can name.
std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (auto dtype : {at::kBFloat16, at::kFloat})
    for (bool forward : {true, false}) names.push_back(kernel_name(dtype, forward));
  return names;
}

lawa::KernelModule& kernels() {
  static lawa::KernelModule module(
#include "cross_entropy_cu.inc"
      , "cross_entropy.cu", kernel_names());
  return module;
}

// (losses, lse) with the kernel: one block per row.
std::tuple<at::Tensor, at::Tensor> cuda_forward(const at::Tensor& logits, const at::Tensor& targets, int64_t vocab,
                                                int64_t ignore_index) {
  int64_t rows = logits.size(0), cols = logits.size(1);
  auto losses = at::empty({rows}, logits.options().dtype(at::kFloat));
  auto lse = at::empty({rows}, logits.options().dtype(at::kFloat));
  const void* x = logits.data_ptr();
  const void* t = targets.data_ptr();
  void* l = losses.data_ptr();
  void* s = lse.data_ptr();
  int vector = lawa::cross_entropy_vectorized(logits, logits);
  kernels().launch(logits.get_device(), kernel_name(logits.scalar_type(), true), static_cast<unsigned>(rows), lawa::kCrossEntropyThreads,
                   {&x, &t, &l, &s, &cols, &vocab, &ignore_index, &vector});
  return {losses, lse};
}

at::Tensor cuda_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                         const at::Tensor& grad, int64_t vocab, int64_t ignore_index) {
  int64_t rows = logits.size(0), cols = logits.size(1);
  auto out = at::empty_like(logits);
  const void* x = logits.data_ptr();
  const void* t = targets.data_ptr();
  const void* s = lse.data_ptr();
  const void* g = grad.data_ptr();
  void* o = out.data_ptr();
  int vector = lawa::cross_entropy_vectorized(logits, out);
  kernels().launch(logits.get_device(), kernel_name(logits.scalar_type(), false), static_cast<unsigned>(rows), lawa::kCrossEntropyThreads,
                   {&x, &t, &s, &g, &o, &cols, &vocab, &ignore_index, &vector});
  return out;
}

// Targets in [0, vocab), the others replaced by 0 (for gathering), and which they were.
std::tuple<at::Tensor, at::Tensor> in_range(const at::Tensor& targets, int64_t vocab) {
  auto ok = targets.ge(0).logical_and(targets.lt(vocab));
  return {at::where(ok, targets, at::zeros_like(targets)), ok};
}

std::tuple<at::Tensor, at::Tensor> reference_forward(const at::Tensor& logits, const at::Tensor& targets,
                                                     int64_t vocab, int64_t ignore_index) {
  auto x = logits.to(at::kFloat).narrow(1, 0, vocab);
  auto lse = at::logsumexp(x, {1});
  auto [safe, ok] = in_range(targets, vocab);
  auto picked = x.gather(1, safe.unsqueeze(1)).squeeze(1);
  auto nan = at::full({}, std::numeric_limits<float>::quiet_NaN(), lse.options());
  auto losses = at::where(ok, lse - picked, nan);
  losses = at::where(targets.eq(ignore_index), at::zeros_like(losses), losses);
  return {losses, lse};
}

at::Tensor reference_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                              const at::Tensor& grad, int64_t vocab, int64_t ignore_index) {
  auto g = at::where(targets.eq(ignore_index), at::zeros_like(grad), grad);
  auto x = logits.to(at::kFloat).narrow(1, 0, vocab);
  auto d = at::exp(x - lse.unsqueeze(1)) * g.unsqueeze(1);
  auto [safe, ok] = in_range(targets, vocab);
  d.scatter_add_(1, safe.unsqueeze(1), at::where(ok, -g, at::zeros_like(g)).unsqueeze(1));
  auto out = at::zeros_like(logits);
  out.narrow(1, 0, vocab).copy_(d);  // rounded once to the logits' dtype
  return out;
}

class CrossEntropyRows : public torch::autograd::Function<CrossEntropyRows> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& targets, int64_t vocab, int64_t ignore_index) {
    auto [losses, lse] = logits.is_cuda() ? cuda_forward(logits, targets, vocab, ignore_index)
                                          : reference_forward(logits, targets, vocab, ignore_index);
    ctx->save_for_backward({logits, targets, lse});
    ctx->saved_data["vocab"] = vocab;
    ctx->saved_data["ignore_index"] = ignore_index;
    return losses;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &targets = saved[1], &lse = saved[2];
    int64_t vocab = ctx->saved_data["vocab"].toInt();
    int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    at::Tensor grad_logits;
    if (grads[0].defined()) {
      auto grad = grads[0].to(at::kFloat).contiguous();
      grad_logits = logits.is_cuda() ? cuda_backward(logits, targets, lse, grad, vocab, ignore_index)
                                     : reference_backward(logits, targets, lse, grad, vocab, ignore_index);
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// *out = the per-row losses (fp32 [rows], differentiable with respect to `logits`): see
// lawa_ops::cross_entropy.
int lawa_cross_entropy(const at::Tensor* logits, const at::Tensor* targets, int64_t vocab, int64_t ignore_index,
                       at::Tensor** out, char** error) {
  return lawa_guarded(error, [&] {
    lawa::check_cross_entropy_inputs(*logits, *targets, vocab);
    auto losses = CrossEntropyRows::apply(logits->contiguous(), targets->contiguous(), vocab, ignore_index);
    *out = new at::Tensor(losses);
  });
}

// Compiles the cross-entropy kernels with NVRTC for `arch` (e.g. "sm_90") and returns the size
// of the binary in *bytes: a check that needs NVRTC but no GPU. `library`: libnvrtc's path, or
// empty for the one beside libtorch, through the kernel cache (see KernelModule::binary).
int lawa_cross_entropy_compile(const char* arch, const char* library, size_t* bytes, char** error) {
  return lawa_guarded(error, [&] {
    *bytes = kernels().binary(arch, library).size();
  });
}

}  // extern "C"
