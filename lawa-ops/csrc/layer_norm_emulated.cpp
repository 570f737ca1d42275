// The add + LayerNorm kernels' CUDA source (kernels/layer_norm.cu) run on the CPU through
// cuda_emulator.h, for the tests: the same code a GPU runs, its warp reductions and the weight
// and bias gradients' partial sums included. Slow (a thread per CUDA thread).

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

#include <ATen/ATen.h>

#include "lawa_guarded.h"
#include "layer_norm.h"

// After every other header: it defines CUDA's keywords as macros.
#include "cuda_emulator.h"
#include "kernels/common.cuh"
#include "kernels/layer_norm.cu"

namespace {

template <typename T>
T* data(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// The forward kernel's parameters.
template <typename D, typename O>
using Forward = void (*)(const float*, const D*, const float*, const float*, float*, O*, float*, float*, long long,
                         long long, float);
// The input gradient kernel's parameters.
template <typename D, typename O>
using BackwardInput = void (*)(const float*, const O*, const float*, const float*, const float*, const float*, float*,
                               D*, long long, long long);

// The forward kernel for `groups` groups of 4 values a lane (0: the one that re-reads the row),
// as layer_norm.cpp picks it by name on a GPU.
template <typename D, typename O>
Forward<D, O> forward_kernel(int groups) {
  switch (groups) {
    case 0:
      return lawa_ln_forward<D, O>;
    case 2:
      return lawa_ln_forward_rows<D, O, 2>;
    case 4:
      return lawa_ln_forward_rows<D, O, 4>;
    case 8:
      return lawa_ln_forward_rows<D, O, 8>;
    case 16:
      return lawa_ln_forward_rows<D, O, 16>;
  }
  throw std::logic_error("no forward kernel for " + std::to_string(groups) + " groups a lane");
}

// The input gradient kernel likewise (built for up to kLayerNormBackwardGroups).
template <typename D, typename O>
BackwardInput<D, O> backward_input_kernel(int groups) {
  switch (groups) {
    case 0:
      return lawa_ln_backward_input<D, O>;
    case 2:
      return lawa_ln_backward_input_rows<D, O, 2>;
    case 4:
      return lawa_ln_backward_input_rows<D, O, 4>;
    case 8:
      return lawa_ln_backward_input_rows<D, O, 8>;
  }
  throw std::logic_error("no backward kernel for " + std::to_string(groups) + " groups a lane");
}

// The three kernels for a delta of type D (float when there is none) and an output of type O;
// the per-row ones chosen as on a GPU when `in_registers`, else those that re-read the row.
// Returns the groups of 4 values a lane of the forward and the input gradient kernels that ran.
template <typename D, typename O>
std::array<int, 2> run(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, const at::Tensor& bias,
                       float eps, const at::Tensor& grad_sum, const at::Tensor& grad_y, bool in_registers,
                       std::array<at::Tensor, 8>& out) {
  // Chunks smaller than a GPU's (kLayerNormRowsPerChunk), so that a test's few rows make several.
  long long rows = x.size(0), cols = x.size(1), per_chunk = 64;
  unsigned blocks = static_cast<unsigned>((rows + lawa::kLayerNormWarps - 1) / lawa::kLayerNormWarps);
  unsigned threads = 32 * lawa::kLayerNormWarps;
  auto& [sum, y, mean, rstd, gx, gd, gw, gb] = out;
  const at::Tensor& s = delta.defined() ? sum : x;
  std::array<int, 2> groups = {0, 0};
  if (in_registers) {
    groups[0] = lawa::layer_norm_row_groups(cols, lawa::kLayerNormForwardGroups,
                                            {data<void>(x), data<void>(delta), data<void>(weight), data<void>(bias),
                                             data<void>(sum), data<void>(y)});
    groups[1] = lawa::layer_norm_row_groups(cols, lawa::kLayerNormBackwardGroups,
                                            {data<void>(s), data<void>(grad_y), data<void>(grad_sum),
                                             data<void>(weight), data<void>(gx), data<void>(gd)});
  }
  lawa_emu::launch(forward_kernel<D, O>(groups[0]), blocks, threads, data<const float>(x), data<const D>(delta),
                   data<const float>(weight), data<const float>(bias), data<float>(sum), data<O>(y),
                   data<float>(mean), data<float>(rstd), rows, cols, eps);
  lawa_emu::launch(backward_input_kernel<D, O>(groups[1]), blocks, threads, data<const float>(s),
                   data<const O>(grad_y), data<const float>(grad_sum), data<const float>(weight),
                   data<const float>(mean), data<const float>(rstd), data<float>(gx), data<D>(gd), rows, cols);
  long long chunks = (rows + per_chunk - 1) / per_chunk, tiles = (cols + 31) / 32;
  auto pw = at::empty({chunks, cols}, x.options()), pb = at::empty({chunks, cols}, x.options());
  lawa_emu::launch(lawa_ln_backward_params<O>, static_cast<unsigned>(chunks * tiles), 256u, data<const float>(s),
                   data<const O>(grad_y), data<const float>(mean), data<const float>(rstd), data<float>(pw),
                   data<float>(pb), rows, cols, per_chunk);
  gw = pw.sum(0);
  gb = pb.sum(0);
  return groups;
}

}  // namespace

extern "C" {

// Runs the forward kernel, then both backward kernels with the upstream gradients grad_sum (fp32,
// may be null) and grad_y (the output's dtype), on CPU tensors: out[0..8] = sum (null without a
// delta), y, mean, rstd, grad_x, grad_delta (null without a delta), grad_weight, grad_bias; and
// row_groups[0..2] = the groups of 4 values a lane of the forward and the input gradient kernels
// that ran (chosen as on a GPU with `in_registers`, else 0: the kernels that re-read the row).
int lawa_layer_norm_emulated(const at::Tensor* x, const at::Tensor* delta, const at::Tensor* weight,
                             const at::Tensor* bias, double eps, int out_bf16, const at::Tensor* grad_sum,
                             const at::Tensor* grad_y, int in_registers, at::Tensor** out, int* row_groups,
                             char** error) {
  return lawa_guarded(error, [&] {
    at::Tensor d = delta ? delta->contiguous() : at::Tensor();
    at::Tensor b = bias ? bias->contiguous() : at::Tensor();
    auto dtype = out_bf16 ? at::kBFloat16 : at::kFloat;
    lawa::check_layer_norm_inputs(*x, d, *weight, b, dtype);
    if (!x->device().is_cpu()) throw std::invalid_argument("the emulation runs on CPU tensors");
    if (grad_y->sizes() != x->sizes() || grad_y->scalar_type() != dtype)
      throw std::invalid_argument("grad_y must have y's shape and dtype");
    auto xc = x->contiguous();
    auto wc = weight->contiguous();
    std::array<at::Tensor, 8> t;
    long long rows = xc.size(0);
    t[0] = d.defined() ? at::empty_like(xc) : at::Tensor();
    t[1] = at::empty_like(xc, xc.options().dtype(dtype));
    t[2] = at::empty({rows}, xc.options());
    t[3] = at::empty({rows}, xc.options());
    t[4] = at::empty_like(xc);
    t[5] = d.defined() ? at::empty_like(d) : at::Tensor();
    at::Tensor gs = grad_sum ? grad_sum->to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor gy = grad_y->contiguous();
    float e = static_cast<float>(eps);
    bool bf16_delta = d.defined() && d.scalar_type() == at::kBFloat16;
    bool bf16_out = dtype == at::kBFloat16;
    bool r = in_registers != 0;
    std::array<int, 2> groups;
    if (bf16_delta && bf16_out) groups = run<lawa_bf16, lawa_bf16>(xc, d, wc, b, e, gs, gy, r, t);
    if (bf16_delta && !bf16_out) groups = run<lawa_bf16, float>(xc, d, wc, b, e, gs, gy, r, t);
    if (!bf16_delta && bf16_out) groups = run<float, lawa_bf16>(xc, d, wc, b, e, gs, gy, r, t);
    if (!bf16_delta && !bf16_out) groups = run<float, float>(xc, d, wc, b, e, gs, gy, r, t);
    row_groups[0] = groups[0];
    row_groups[1] = groups[1];
    for (int i = 0; i < 8; ++i) out[i] = t[i].defined() ? new at::Tensor(t[i]) : nullptr;
  });
}

}  // extern "C"
