// What the add + LayerNorm kernels' launchers share: on a GPU (layer_norm.cpp) and in the CPU
// emulation of the same source (layer_norm_emulated.cpp).
#pragma once

#include <string>

#include <ATen/ATen.h>

namespace lawa {

// Rows per block of the per-row kernels (a warp each), and rows per chunk of the weight and
// bias gradients' partial sums.
constexpr unsigned kLayerNormWarps = 8;
constexpr long long kLayerNormRowsPerChunk = 256;

// Throws std::invalid_argument naming what is wrong with lawa_add_layer_norm's inputs: x fp32
// [rows, cols] contiguous; delta undefined or [rows, cols] bf16/fp32; weight fp32 [cols]; bias
// undefined or fp32 [cols]; out bf16 or fp32; all on one device.
void check_layer_norm_inputs(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                             const at::Tensor& bias, at::ScalarType out);

// "bf16" or "f32", as the kernels' names spell a dtype.
std::string kernel_dtype(at::ScalarType dtype);

}  // namespace lawa
