// What the add + LayerNorm kernels' launchers share: on a GPU (layer_norm.cpp) and in the CPU
// emulation of the same source (layer_norm_emulated.cpp).
#pragma once

#include <initializer_list>
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

// Groups of 4 values a lane (2, 4, 8 or 16) of the per-row kernels that hold a row in registers,
// for rows of `cols` values: the fewest that hold a row. 0 when the per-row kernels that re-read
// it must run instead: `cols` not a multiple of 4 or above 128 * `most` (the forward kernels are
// built for up to kLayerNormForwardGroups, the backward ones kLayerNormBackwardGroups), or a
// tensor not aligned to 16 bytes (a null pointer is a tensor left out).
constexpr int kLayerNormForwardGroups = 16;
constexpr int kLayerNormBackwardGroups = 8;
int layer_norm_row_groups(long long cols, int most, std::initializer_list<const void*> tensors);

// The name of a per-row kernel ("lawa_ln_forward", "lawa_ln_backward_input") for `groups` (0:
// the kernels that re-read the row), a delta of dtype `delta` and an output of dtype `out`.
std::string layer_norm_kernel(const char* base, int groups, at::ScalarType delta, at::ScalarType out);

}  // namespace lawa
