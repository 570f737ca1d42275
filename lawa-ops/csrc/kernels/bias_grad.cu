// A linear layer's bias gradient, the column sums of its output's gradient [rows, cols], as
// per-chunk partial sums in fp32 that libtorch adds up: what `grad.sum(0)` computes, read 16
// bytes at a time. Compiled at run time by NVRTC (see nvrtc_module.cpp) and launched by
// linear.cpp.
//
// Block b covers 256 columns (tile b % tiles: 32 lanes of 8 columns each) of the rows of chunk
// b / tiles, its 8 warps taking every 8th row; the warps' sums meet in shared memory.
// blockDim.x = 256.
//
// Needs common.cuh, which the launcher prepends.

#define LAWA_BIAS_GRAD_COLUMNS 8

// The 8 values of `row` from column `c` on: one or two 16-byte vectors where `vectorized`
// (cols a multiple of 8 and an aligned start), value by value (zero past the last column)
// otherwise.
template <typename D>
__device__ __forceinline__ void lawa_bias_grad_load(const D* __restrict__ grad, long long row, long long c,
                                                    long long cols, int vectorized, float* v) {
  const D* p = grad + row * cols;
  if (vectorized) {
    for (int k = 0; k < LAWA_BIAS_GRAD_COLUMNS; k += LawaVector<D>::n)
      LawaVector<D>::load(p, (c + k) / LawaVector<D>::n, v + k);
    return;
  }
  for (int k = 0; k < LAWA_BIAS_GRAD_COLUMNS; ++k) v[k] = c + k < cols ? lawa_load(p, c + k) : 0.f;
}

// partial[chunk, c] = the sum of grad[row, c] over the rows of the chunk.
template <typename D>
__device__ void lawa_bias_grad(const D* __restrict__ grad, float* __restrict__ partial, long long rows,
                               long long cols, long long rows_per_chunk, int vectorized) {
  __shared__ float sums[8][32 * LAWA_BIAS_GRAD_COLUMNS];
  long long width = 32 * LAWA_BIAS_GRAD_COLUMNS;
  long long tiles = (cols + width - 1) / width;
  long long tile = blockIdx.x % tiles, chunk = blockIdx.x / tiles;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  long long c = tile * width + lane * LAWA_BIAS_GRAD_COLUMNS;
  long long first = chunk * rows_per_chunk;
  long long last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  float total[LAWA_BIAS_GRAD_COLUMNS] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (c < cols) {
#pragma unroll 4
    for (long long row = first + warp; row < last; row += 8) {
      float v[LAWA_BIAS_GRAD_COLUMNS];
      lawa_bias_grad_load(grad, row, c, cols, vectorized, v);
      for (int k = 0; k < LAWA_BIAS_GRAD_COLUMNS; ++k) total[k] += v[k];
    }
  }
  for (int k = 0; k < LAWA_BIAS_GRAD_COLUMNS; ++k) sums[warp][lane * LAWA_BIAS_GRAD_COLUMNS + k] = total[k];
  __syncthreads();
  // Thread t adds up column t of the tile over the 8 warps.
  long long column = tile * width + threadIdx.x;
  if (column < cols) {
    float s = 0.f;
    for (int w = 0; w < 8; ++w) s += sums[w][threadIdx.x];
    partial[chunk * cols + column] = s;
  }
}

extern "C" __global__ void lawa_bias_grad_bf16(const lawa_bf16* grad, float* partial, long long rows, long long cols,
                                               long long rows_per_chunk, int vectorized) {
  lawa_bias_grad(grad, partial, rows, cols, rows_per_chunk, vectorized);
}

extern "C" __global__ void lawa_bias_grad_f32(const float* grad, float* partial, long long rows, long long cols,
                                              long long rows_per_chunk, int vectorized) {
  lawa_bias_grad(grad, partial, rows, cols, rows_per_chunk, vectorized);
}
