// A linear layer, y = x W^T + b, as one autograd function whose backward pass computes the bias
// gradient with lawa's kernel (kernels/bias_grad.cu) on CUDA. The forward pass and the other
// gradients are the very ops at::linear and its autograd run over rows (addmm, and the two mm
// of addmm's backward), so off CUDA the function equals at::linear bit for bit. See
// lawa_ops::linear for the contract.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "lawa_guarded.h"
#include "linear.h"
#include "nvrtc_module.h"

namespace lawa {

// The bias-gradient kernel for a gradient of `dtype` (bf16; fp32 otherwise).
const char* bias_grad_kernel(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? "lawa_bias_grad_bf16" : "lawa_bias_grad_f32";
}

int bias_grad_vectorized(const at::Tensor& grad) {
  bool aligned = reinterpret_cast<uintptr_t>(grad.data_ptr()) % 16 == 0;
  return grad.size(1) % 8 == 0 && aligned ? 1 : 0;
}

namespace {

lawa::KernelModule& kernels() {
  static lawa::KernelModule module(
#include "bias_grad_cu.inc"
      , "bias_grad.cu", {bias_grad_kernel(at::kBFloat16), bias_grad_kernel(at::kFloat)});
  return module;
}

}  // namespace

at::Tensor bias_grad_partials(const at::Tensor& grad, long long rows_per_chunk) {
  long long rows = grad.size(0), cols = grad.size(1);
  long long chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  long long tiles = (cols + kBiasGradColumnsPerBlock - 1) / kBiasGradColumnsPerBlock;
  auto partial = at::empty({chunks, cols}, grad.options().dtype(at::kFloat));
  const void* g = grad.data_ptr();
  void* p = partial.data_ptr();
  int vector = bias_grad_vectorized(grad);
  kernels().launch(grad.get_device(), bias_grad_kernel(grad.scalar_type()), static_cast<unsigned>(chunks * tiles),
                   kBiasGradThreads, {&g, &p, &rows, &cols, &rows_per_chunk, &vector});
  return partial;
}

}  // namespace lawa

namespace {

// The bias gradient, the column sums of `grad` (rows of the output's gradient) in the bias's
// dtype: lawa's kernel on CUDA for bf16 and fp32, `grad.sum(0)` (what addmm's autograd
// computes) elsewhere and for other dtypes.
at::Tensor bias_grad(const at::Tensor& grad) {
  auto dtype = grad.scalar_type();
  if (!grad.is_cuda() || (dtype != at::kBFloat16 && dtype != at::kFloat)) return grad.sum(0);
  auto partial = lawa::bias_grad_partials(grad.contiguous(), lawa::kBiasGradRowsPerChunk);
  return partial.sum(0).to(grad.scalar_type());
}

class Linear : public torch::autograd::Function<Linear> {
 public:
  // bias is an optional: an undefined tensor cannot be an autograd function's input.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["bias"] = bias.has_value();
    // What at::linear runs for rows of a contiguous input.
    if (bias) return at::addmm(*bias, x, weight.t());
    return at::mm(x, weight.t());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1];
    const auto& grad = grads[0];
    at::Tensor gx, gw, gb;
    // addmm's (and mm's) autograd: grad W for x; for W^T, stored column-major, libtorch's
    // mm_mat2_backward computes (grad^T x)^T, which W receives transposed back: grad^T x; the
    // column sums for b.
    if (ctx->needs_input_grad(0)) gx = grad.mm(weight);
    if (ctx->needs_input_grad(1)) gw = grad.t().mm(x);
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) gb = bias_grad(grad);
    return {gx, gw, gb};
  }
};

}  // namespace

extern "C" {

// *y = x W^T + b over the rows of `x` ([rows, in]), differentiable, the bias gradient by lawa's
// kernel on CUDA: see lawa_ops::linear. `bias` may be null.
int lawa_linear(const at::Tensor* x, const at::Tensor* weight, const at::Tensor* bias, at::Tensor** y,
                char** error) {
  return lawa_guarded(error, [&] {
    if (x->dim() != 2) throw std::invalid_argument("x must be [rows, in]");
    if (weight->dim() != 2 || weight->size(1) != x->size(1))
      throw std::invalid_argument("weight must be [out, " + std::to_string(x->size(1)) + "]");
    if (bias && (bias->dim() != 1 || bias->size(0) != weight->size(0)))
      throw std::invalid_argument("bias must be [" + std::to_string(weight->size(0)) + "]");
    std::optional<at::Tensor> b;
    if (bias) b = *bias;
    *y = new at::Tensor(Linear::apply(x->contiguous(), *weight, b));
  });
}

// Compiles the bias-gradient kernel with NVRTC for `arch`: see lawa_cross_entropy_compile.
int lawa_bias_grad_compile(const char* arch, const char* library, size_t* bytes, char** error) {
  return lawa_guarded(error, [&] {
    *bytes = lawa::kernels().binary(arch, library).size();
  });
}

}  // extern "C"
