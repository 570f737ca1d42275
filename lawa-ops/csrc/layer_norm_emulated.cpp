// The add + LayerNorm kernels' CUDA source (kernels/layer_norm.cu) run on the CPU through
// cuda_emulator.h, for the tests: the same code a GPU runs, its warp reductions and the weight
// and bias gradients' partial sums included. Slow (a thread per CUDA thread).

#include <array>
#include <stdexcept>

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

// The three kernels for a delta of type D (float when there is none) and an output of type O.
template <typename D, typename O>
void run(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, const at::Tensor& bias, float eps,
         const at::Tensor& grad_sum, const at::Tensor& grad_y, std::array<at::Tensor, 8>& out) {
  // Chunks smaller than a GPU's (kLayerNormRowsPerChunk), so that a test's few rows make several.
  long long rows = x.size(0), cols = x.size(1), per_chunk = 64;
  unsigned blocks = static_cast<unsigned>((rows + lawa::kLayerNormWarps - 1) / lawa::kLayerNormWarps);
  unsigned threads = 32 * lawa::kLayerNormWarps;
  auto& [sum, y, mean, rstd, gx, gd, gw, gb] = out;
  lawa_emu::launch(lawa_ln_forward<D, O>, blocks, threads, data<const float>(x), data<const D>(delta),
                   data<const float>(weight), data<const float>(bias), data<float>(sum), data<O>(y),
                   data<float>(mean), data<float>(rstd), rows, cols, eps);
  const at::Tensor& s = delta.defined() ? sum : x;
  lawa_emu::launch(lawa_ln_backward_input<D, O>, blocks, threads, data<const float>(s), data<const O>(grad_y),
                   data<const float>(grad_sum), data<const float>(weight), data<const float>(mean),
                   data<const float>(rstd), data<float>(gx), data<D>(gd), rows, cols);
  long long chunks = (rows + per_chunk - 1) / per_chunk, tiles = (cols + 31) / 32;
  auto pw = at::empty({chunks, cols}, x.options()), pb = at::empty({chunks, cols}, x.options());
  lawa_emu::launch(lawa_ln_backward_params<O>, static_cast<unsigned>(chunks * tiles), 256u, data<const float>(s),
                   data<const O>(grad_y), data<const float>(mean), data<const float>(rstd), data<float>(pw),
                   data<float>(pb), rows, cols, per_chunk);
  gw = pw.sum(0);
  gb = pb.sum(0);
}

}  // namespace

extern "C" {

// Runs the forward kernel, then both backward kernels with the upstream gradients grad_sum (fp32,
// may be null) and grad_y (the output's dtype), on CPU tensors: out[0..8] = sum (null without a
// delta), y, mean, rstd, grad_x, grad_delta (null without a delta), grad_weight, grad_bias.
int lawa_layer_norm_emulated(const at::Tensor* x, const at::Tensor* delta, const at::Tensor* weight,
                             const at::Tensor* bias, double eps, int out_bf16, const at::Tensor* grad_sum,
                             const at::Tensor* grad_y, at::Tensor** out, char** error) {
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
    if (bf16_delta && bf16_out) run<lawa_bf16, lawa_bf16>(xc, d, wc, b, e, gs, gy, t);
    if (bf16_delta && !bf16_out) run<lawa_bf16, float>(xc, d, wc, b, e, gs, gy, t);
    if (!bf16_delta && bf16_out) run<float, lawa_bf16>(xc, d, wc, b, e, gs, gy, t);
    if (!bf16_delta && !bf16_out) run<float, float>(xc, d, wc, b, e, gs, gy, t);
    for (int i = 0; i < 8; ++i) out[i] = t[i].defined() ? new at::Tensor(t[i]) : nullptr;
  });
}

}  // extern "C"
