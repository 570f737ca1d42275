// The bias-gradient kernel's CUDA source (kernels/bias_grad.cu) run on the CPU through
// cuda_emulator.h, for the tests: the same code a GPU runs, its 16-byte reads and shared-memory
// sums included. Slow (a thread per CUDA thread).

#include <stdexcept>

#include <ATen/ATen.h>

#include "lawa_guarded.h"
#include "linear.h"

// After every other header: it defines CUDA's keywords as macros.
#include "cuda_emulator.h"
#include "kernels/common.cuh"
#include "kernels/bias_grad.cu"

namespace {

at::Tensor bias_grad_partials_emulated(const at::Tensor& grad, long long rows_per_chunk) {
  long long rows = grad.size(0), cols = grad.size(1);
  long long chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  long long tiles = (cols + lawa::kBiasGradColumnsPerBlock - 1) / lawa::kBiasGradColumnsPerBlock;
  auto partial = at::empty({chunks, cols}, grad.options().dtype(at::kFloat));
  int vector = lawa::bias_grad_vectorized(grad);
  auto blocks = static_cast<unsigned>(chunks * tiles);
  if (grad.scalar_type() == at::kBFloat16) {
    lawa_emu::launch(lawa_bias_grad_bf16, blocks, lawa::kBiasGradThreads, static_cast<const lawa_bf16*>(grad.data_ptr()),
                     partial.data_ptr<float>(), rows, cols, rows_per_chunk, vector);
  } else {
    lawa_emu::launch(lawa_bias_grad_f32, blocks, lawa::kBiasGradThreads, (const float*)grad.data_ptr<float>(),
                     partial.data_ptr<float>(), rows, cols, rows_per_chunk, vector);
  }
  return partial;
}

}  // namespace

extern "C" {

// The kernel's partial column sums of `grad` (a CPU bf16 or fp32 [rows, cols]) by chunks of
// `rows_per_chunk` rows: *partial = [chunks, cols] fp32.
int lawa_bias_grad_emulated(const at::Tensor* grad, long long rows_per_chunk, at::Tensor** partial, char** error) {
  return lawa_guarded(error, [&] {
    if (!grad->device().is_cpu()) throw std::invalid_argument("the emulation runs on CPU tensors");
    if (grad->dim() != 2) throw std::invalid_argument("grad must be [rows, columns]");
    auto dtype = grad->scalar_type();
    if (dtype != at::kBFloat16 && dtype != at::kFloat) throw std::invalid_argument("grad must be bf16 or fp32");
    if (rows_per_chunk < 1) throw std::invalid_argument("rows_per_chunk must be at least 1");
    *partial = new at::Tensor(bias_grad_partials_emulated(grad->contiguous(), rows_per_chunk));
  });
}

}  // extern "C"
