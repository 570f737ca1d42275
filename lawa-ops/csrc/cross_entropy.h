// What the cross-entropy kernels' launchers share: on a GPU (cross_entropy.cpp) and in the CPU
// emulation of the same source (cross_entropy_emulated.cpp).
#pragma once

#include <ATen/ATen.h>

namespace lawa {

// Threads per block (one block per row); the kernels' __launch_bounds__ (cross_entropy.cu)
// promise no more, so that the compiler keeps each thread's registers within what 512 may use.
constexpr unsigned kCrossEntropyThreads = 512;

// Whether the kernels may read (and write) rows 16 bytes at a time: rows of a multiple of 16
// bytes, both tensors 16-byte aligned. 1 or 0, the kernels' `vectorized` argument.
int cross_entropy_vectorized(const at::Tensor& logits, const at::Tensor& other);

// Throws std::invalid_argument naming what is wrong with the inputs of lawa_cross_entropy.
void check_cross_entropy_inputs(const at::Tensor& logits, const at::Tensor& targets, int64_t vocab);

}  // namespace lawa
