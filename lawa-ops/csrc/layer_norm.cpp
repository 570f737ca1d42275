// A residual add and the LayerNorm after it as one autograd function: on CUDA lawa's kernels
// (kernels/layer_norm.cu), elsewhere the same arithmetic with ATen ops (x + delta,
// native_layer_norm and its backward: the reference the kernels are tested against). See
// lawa_ops::add_layer_norm for the contract.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "lawa_guarded.h"
#include "layer_norm.h"
#include "nvrtc_module.h"

namespace lawa {

void check_layer_norm_inputs(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                             const at::Tensor& bias, at::ScalarType out) {
  auto fail = [](const std::string& why) { throw std::invalid_argument(why); };
  if (x.dim() != 2 || x.scalar_type() != at::kFloat) fail("x must be fp32 [rows, columns]");
  int64_t cols = x.size(1);
  auto floating = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
  };
  if (delta.defined() && (delta.sizes() != x.sizes() || !floating(delta)))
    fail("delta must be bf16 or fp32 of x's shape");
  if (weight.dim() != 1 || weight.size(0) != cols || weight.scalar_type() != at::kFloat)
    fail("weight must be fp32 [" + std::to_string(cols) + "]");
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != cols || bias.scalar_type() != at::kFloat))
    fail("bias must be fp32 [" + std::to_string(cols) + "]");
  if (out != at::kFloat && out != at::kBFloat16) fail("the output dtype must be bf16 or fp32");
  for (const auto* t : {&delta, &weight, &bias})
    if (t->defined() && t->device() != x.device()) fail("all tensors must be on x's device");
}

std::string kernel_dtype(at::ScalarType dtype) { return dtype == at::kBFloat16 ? "bf16" : "f32"; }

int layer_norm_row_groups(long long cols, int most, std::initializer_list<const void*> tensors) {
  if (cols <= 0 || cols % 4 != 0) return 0;
  for (const void* t : tensors)
    if (reinterpret_cast<std::uintptr_t>(t) % 16 != 0) return 0;
  for (int groups : {2, 4, 8, 16})
    if (groups <= most && cols <= 128LL * groups) return groups;
  return 0;
}

std::string layer_norm_kernel(const char* base, int groups, at::ScalarType delta, at::ScalarType out) {
  std::string name = base;
  if (groups > 0) name += "_v" + std::to_string(groups);
  return name + "_" + kernel_dtype(delta) + "_" + kernel_dtype(out);
}

}  // namespace lawa

namespace {

using Tensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Every kernel the launchers can name.
std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (auto [base, most] : {std::pair{"lawa_ln_forward", lawa::kLayerNormForwardGroups},
                            std::pair{"lawa_ln_backward_input", lawa::kLayerNormBackwardGroups}})
    for (int groups : {0, 2, 4, 8, 16})
      for (auto delta : {at::kBFloat16, at::kFloat})
        for (auto out : {at::kBFloat16, at::kFloat})
          if (groups <= most) names.push_back(lawa::layer_norm_kernel(base, groups, delta, out));
  for (auto out : {at::kBFloat16, at::kFloat}) names.push_back("lawa_ln_backward_params_" + lawa::kernel_dtype(out));
  return names;
}

lawa::KernelModule& kernels() {
  static lawa::KernelModule module(
#include "layer_norm_cu.inc"
      , "layer_norm.cu", kernel_names());
  return module;
}

const void* pointer(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + lawa::kLayerNormWarps - 1) / lawa::kLayerNormWarps);
}

// (sum or undefined, y, mean, rstd) by the forward kernel.
Tensors cuda_forward(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, const at::Tensor& bias,
                     double eps, at::ScalarType out) {
  long long rows = x.size(0), cols = x.size(1);
  at::Tensor sum = delta.defined() ? at::empty_like(x) : at::Tensor();
  auto y = at::empty_like(x, x.options().dtype(out));
  auto mean = at::empty({rows}, x.options());
  auto rstd = at::empty({rows}, x.options());
  const void *px = pointer(x), *pd = pointer(delta), *pw = pointer(weight), *pb = pointer(bias);
  const void *ps = pointer(sum), *py = pointer(y), *pm = pointer(mean), *pr = pointer(rstd);
  float e = static_cast<float>(eps);
  int groups = lawa::layer_norm_row_groups(cols, lawa::kLayerNormForwardGroups, {px, pd, pw, pb, ps, py});
  auto name = lawa::layer_norm_kernel("lawa_ln_forward", groups, delta.defined() ? delta.scalar_type() : at::kFloat,
                                      out);
  kernels().launch(x.get_device(), name.c_str(), row_blocks(rows), 32 * lawa::kLayerNormWarps,
                   {&px, &pd, &pw, &pb, &ps, &py, &pm, &pr, &rows, &cols, &e});
  return {sum, y, mean, rstd};
}

// (grad_x, grad_delta or undefined, grad_weight, grad_bias) by the backward kernels.
Tensors cuda_backward(const at::Tensor& s, const at::Tensor& grad_y, const at::Tensor& grad_sum,
                      const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
                      c10::optional<at::ScalarType> delta) {
  long long rows = s.size(0), cols = s.size(1), per_chunk = lawa::kLayerNormRowsPerChunk;
  auto gx = at::empty_like(s);
  at::Tensor gd = delta ? at::empty_like(s, s.options().dtype(*delta)) : at::Tensor();
  const void *ps = pointer(s), *pgy = pointer(grad_y), *pgs = pointer(grad_sum), *pw = pointer(weight);
  const void *pm = pointer(mean), *pr = pointer(rstd), *pgx = pointer(gx), *pgd = pointer(gd);
  int groups = lawa::layer_norm_row_groups(cols, lawa::kLayerNormBackwardGroups, {ps, pgy, pgs, pw, pgx, pgd});
  auto name = lawa::layer_norm_kernel("lawa_ln_backward_input", groups, delta ? *delta : at::kFloat,
                                      grad_y.scalar_type());
  kernels().launch(s.get_device(), name.c_str(), row_blocks(rows), 32 * lawa::kLayerNormWarps,
                   {&ps, &pgy, &pgs, &pw, &pm, &pr, &pgx, &pgd, &rows, &cols});
  long long chunks = (rows + per_chunk - 1) / per_chunk, tiles = (cols + 31) / 32;
  auto partial_w = at::empty({chunks, cols}, s.options());
  auto partial_b = at::empty({chunks, cols}, s.options());
  const void *ppw = pointer(partial_w), *ppb = pointer(partial_b);
  name = "lawa_ln_backward_params_" + lawa::kernel_dtype(grad_y.scalar_type());
  kernels().launch(s.get_device(), name.c_str(), static_cast<unsigned>(chunks * tiles), 256,
                   {&ps, &pgy, &pm, &pr, &ppw, &ppb, &rows, &cols, &per_chunk});
  return {gx, gd, partial_w.sum(0), partial_b.sum(0)};
}

Tensors reference_forward(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                          const at::Tensor& bias, double eps, at::ScalarType out) {
  at::Tensor s = delta.defined() ? x + delta : x;
  auto [y, mean, rstd] = at::native_layer_norm(s, {x.size(1)}, weight, bias, eps);
  return {delta.defined() ? s : at::Tensor(), y.to(out), mean.view({-1}), rstd.view({-1})};
}

Tensors reference_backward(const at::Tensor& s, const at::Tensor& grad_y, const at::Tensor& grad_sum,
                           const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
                           c10::optional<at::ScalarType> delta) {
  auto dy = grad_y.to(at::kFloat);
  auto [gx, gw, unused] = at::native_layer_norm_backward(dy, s, {s.size(1)}, mean.view({-1, 1}), rstd.view({-1, 1}),
                                                         weight, at::Tensor(), {true, true, false});
  auto gb = dy.sum(0);
  if (grad_sum.defined()) gx = gx + grad_sum;
  return {gx, delta ? gx.to(*delta) : at::Tensor(), gw, gb};
}

class AddLayerNorm : public torch::autograd::Function<AddLayerNorm> {
 public:
  // delta and bias are optionals: an undefined tensor cannot be an autograd function's input.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const std::optional<at::Tensor>& delta_opt, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias_opt, double eps, int64_t out) {
    at::Tensor delta = delta_opt.value_or(at::Tensor()), bias = bias_opt.value_or(at::Tensor());
    auto dtype = static_cast<at::ScalarType>(out);
    auto [sum, y, mean, rstd] = x.is_cuda() ? cuda_forward(x, delta, weight, bias, eps, dtype)
                                            : reference_forward(x, delta, weight, bias, eps, dtype);
    ctx->save_for_backward({delta.defined() ? sum : x, weight, mean, rstd});
    ctx->saved_data["delta"] = delta.defined() ? static_cast<int64_t>(delta.scalar_type()) : int64_t{-1};
    ctx->saved_data["bias"] = bias.defined();
    ctx->saved_data["out"] = out;
    // An output nobody used (ln_f's sum) gets no gradient, rather than a tensor of zeros.
    ctx->set_materialize_grads(false);
    if (delta.defined()) return {sum, y};
    return {y};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &s = saved[0], &weight = saved[1], &mean = saved[2], &rstd = saved[3];
    int64_t code = ctx->saved_data["delta"].toInt();
    c10::optional<at::ScalarType> delta;
    if (code >= 0) delta = static_cast<at::ScalarType>(code);
    at::Tensor grad_sum = delta ? grads[0] : at::Tensor();
    at::Tensor grad_y = delta ? grads[1] : grads[0];
    auto out = static_cast<at::ScalarType>(ctx->saved_data["out"].toInt());
    if (grad_y.defined() && grad_y.scalar_type() != out) grad_y = grad_y.to(out);  // the kernels read y's dtype
    if (grad_sum.defined()) grad_sum = grad_sum.contiguous();
    at::Tensor gx, gd, gw, gb;
    if (grad_y.defined()) {
      grad_y = grad_y.contiguous();
      std::tie(gx, gd, gw, gb) = s.is_cuda() ? cuda_backward(s, grad_y, grad_sum, weight, mean, rstd, delta)
                                             : reference_backward(s, grad_y, grad_sum, weight, mean, rstd, delta);
    } else if (grad_sum.defined()) {
      gx = grad_sum;
      if (delta) gd = grad_sum.to(*delta);
    }
    if (!ctx->saved_data["bias"].toBool()) gb = at::Tensor();
    return {gx, gd, gw, gb, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// *sum = x + delta (fp32; left null without a delta) and *y = LayerNorm(sum) in bf16
// (`out_bf16`) or fp32, differentiable: see lawa_ops::add_layer_norm. `delta` and `bias` may
// be null.
int lawa_add_layer_norm(const at::Tensor* x, const at::Tensor* delta, const at::Tensor* weight, const at::Tensor* bias,
                        double eps, int out_bf16, at::Tensor** sum, at::Tensor** y, char** error) {
  return lawa_guarded(error, [&] {
    at::Tensor d = delta ? delta->contiguous() : at::Tensor();
    at::Tensor b = bias ? bias->contiguous() : at::Tensor();
    auto dtype = out_bf16 ? at::kBFloat16 : at::kFloat;
    lawa::check_layer_norm_inputs(*x, d, *weight, b, dtype);
    auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    auto outputs = AddLayerNorm::apply(x->contiguous(), optional(d), weight->contiguous(), optional(b), eps,
                                       static_cast<int64_t>(dtype));
    if (d.defined()) {
      *sum = new at::Tensor(outputs[0]);
      *y = new at::Tensor(outputs[1]);
    } else {
      *y = new at::Tensor(outputs[0]);
    }
  });
}

// Compiles the add + LayerNorm kernels with NVRTC for `arch`: see lawa_cross_entropy_compile.
int lawa_layer_norm_compile(const char* arch, const char* library, size_t* bytes, char** error) {
  return lawa_guarded(error, [&] {
    *bytes = kernels().binary(arch, library).size();
  });
}

}  // extern "C"
