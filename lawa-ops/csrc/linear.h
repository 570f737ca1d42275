// What the bias-gradient kernel's launchers share: on a GPU (linear.cpp) and in the CPU
// emulation of the same source (linear_emulated.cpp).
#pragma once

#include <ATen/ATen.h>

namespace lawa {

// Threads per block of the bias-gradient kernel (8 warps, 256 columns), and rows per chunk of
// its partial sums.
constexpr unsigned kBiasGradThreads = 256;
constexpr long long kBiasGradColumnsPerBlock = 256;
constexpr long long kBiasGradRowsPerChunk = 128;

// 1 when the kernel may read `grad` 16 bytes at a time: columns a multiple of 8 and an aligned
// start.
int bias_grad_vectorized(const at::Tensor& grad);

// Partial column sums of `grad` (a CUDA bf16 or fp32 [rows, cols], contiguous) by chunks of
// `rows_per_chunk` rows, by the kernel: [chunks, cols] fp32, for the bias gradient
// `partial.sum(0)`.
at::Tensor bias_grad_partials(const at::Tensor& grad, long long rows_per_chunk);

}  // namespace lawa
