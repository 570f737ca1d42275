// A residual add and the LayerNorm after it, in one pass over a row: sum = x + delta (fp32, the
// residual stream), y = LayerNorm(sum) * weight + bias rounded once to the compute dtype (what
// the next matmul reads). Compiled at run time by NVRTC (see nvrtc_module.cpp) and launched by
// layer_norm.cpp; without a delta it is the LayerNorm and the cast alone.
//
// One warp per row (rows of up to a few thousand values: GPT-2's 768 to 1600), mean and
// variance in fp32 in two passes. Rows of up to 2048 values, a multiple of 4, go to kernels
// that hold the row in registers (lawa_ln_*_v<groups>_*: each value read once, 4 values at a
// time); the others to kernels that re-read the row from memory (the second pass over the sum
// they just wrote). The backward pass is two kernels: the input gradient, again a warp per row
// (in registers up to 1,024 values), plus the residual's own gradient; and the weight
// and bias gradients, as per-chunk column sums that libtorch adds up. The arithmetic is torch's
// layer_norm and native_layer_norm_backward, up to summation order.
//
// Needs common.cuh, which the launcher prepends.

__device__ __forceinline__ float lawa_warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Row `blockIdx.x * warps + warp`: sum[row] = x + delta (written only with a delta; otherwise
// the row of x is the sum), y[row] = (sum - mean) * rstd * weight (+ bias), mean[row], rstd[row].
// (`__restrict__` on every pointer but `sum`, which the kernel reads back: so that the loads of
// several iterations can be issued before the stores between them.)
template <typename D, typename O>
__device__ void lawa_ln_forward(const float* __restrict__ x, const D* __restrict__ delta,
                                const float* __restrict__ weight, const float* __restrict__ bias, float* sum,
                                O* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                long long rows, long long cols, float eps) {
  long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp
  int lane = threadIdx.x & 31;
  const float* xr = x + row * cols;
  float* sr = delta ? sum + row * cols : nullptr;
  float total = 0.f;
#pragma unroll 4
  for (long long c = lane; c < cols; c += 32) {
    float s = xr[c];
    if (delta) {
      s += lawa_load(delta + row * cols, c);
      sr[c] = s;
    }
    total += s;
  }
  const float* s = delta ? sr : xr;
  float mean = lawa_warp_sum(total) / (float)cols;
  float squares = 0.f;
  for (long long c = lane; c < cols; c += 32) {
    float d = s[c] - mean;
    squares += d * d;
  }
  float rstd = rsqrtf(lawa_warp_sum(squares) / (float)cols + eps);
  O* yr = y + row * cols;
#pragma unroll 4
  for (long long c = lane; c < cols; c += 32) {
    float v = (s[c] - mean) * rstd * weight[c];
    if (bias) v += bias[c];
    lawa_store(yr, c, v);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// The gradient reaching the sum of row `blockIdx.x * warps + warp`: the LayerNorm's,
// rstd * (dy w - mean(dy w) - xhat mean(dy w xhat)) with xhat = (s - mean) rstd, plus
// grad_sum's (the residual stream's own gradient, when it has one). Written to grad_x (fp32)
// and, with a delta that wants one, rounded to its dtype in grad_delta.
template <typename D, typename O>
__device__ void lawa_ln_backward_input(const float* __restrict__ s, const O* __restrict__ grad_y,
                                       const float* __restrict__ grad_sum, const float* __restrict__ weight,
                                       const float* __restrict__ mean, const float* __restrict__ rstd,
                                       float* __restrict__ grad_x, D* __restrict__ grad_delta, long long rows,
                                       long long cols) {
  long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  int lane = threadIdx.x & 31;
  const float* sr = s + row * cols;
  const O* gy = grad_y + row * cols;
  float m = mean[row], r = rstd[row];
  float a = 0.f, b = 0.f;
  for (long long c = lane; c < cols; c += 32) {
    float dyw = lawa_load(gy, c) * weight[c];
    a += dyw;
    b += dyw * (sr[c] - m) * r;
  }
  float mean_a = lawa_warp_sum(a) / (float)cols;
  float mean_b = lawa_warp_sum(b) / (float)cols;
#pragma unroll 4
  for (long long c = lane; c < cols; c += 32) {
    float xhat = (sr[c] - m) * r;
    float g = r * (lawa_load(gy, c) * weight[c] - mean_a - xhat * mean_b);
    if (grad_sum) g += grad_sum[row * cols + c];
    if (grad_x) grad_x[row * cols + c] = g;
    if (grad_delta) lawa_store(grad_delta + row * cols, c, g);
  }
}

// The same two per-row kernels with the row held in registers: lane `lane` holds the groups of 4
// values `j * 32 + lane` (j < V) of its row, read and written 16 (fp32) or 8 (bf16) bytes at
// a time, all loads of a row before any store, no value read twice from memory. For rows of at
// most 128 V values, a multiple of 4, and tensors aligned to 16 bytes (the launcher checks,
// and takes the kernels above otherwise). Same arithmetic per value as the kernels above;
// the sums' order differs. The backward kernel holds two values per value of the row (xhat
// and dy w), so it is built for up to V = 8 (1,024 columns: 128 registers a lane for them);
// wider rows take the re-reading backward kernel.
template <typename D, typename O, int V>
__device__ void lawa_ln_forward_rows(const float* __restrict__ x, const D* __restrict__ delta,
                                     const float* __restrict__ weight, const float* __restrict__ bias,
                                     float* __restrict__ sum, O* __restrict__ y, float* __restrict__ mean_out,
                                     float* __restrict__ rstd_out, long long rows, long long cols, float eps) {
  long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp
  int lane = threadIdx.x & 31;
  long long groups = cols >> 2, at = row * cols;
  float v[V][4];
  float total = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    long long i = j * 32 + lane;
    if (i < groups) {
      lawa_load4(x + at, i, v[j]);
      if (delta) {
        float d[4];
        lawa_load4(delta + at, i, d);
        #pragma unroll
        for (int k = 0; k < 4; ++k) v[j][k] += d[k];
      }
      #pragma unroll
      for (int k = 0; k < 4; ++k) total += v[j][k];
    }
  }
  float mean = lawa_warp_sum(total) / (float)cols;
  float squares = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (j * 32 + lane < groups) {
      #pragma unroll
      for (int k = 0; k < 4; ++k) {
        float d = v[j][k] - mean;
        squares += d * d;
      }
    }
  }
  float rstd = rsqrtf(lawa_warp_sum(squares) / (float)cols + eps);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    long long i = j * 32 + lane;
    if (i < groups) {
      if (delta) lawa_store4(sum + at, i, v[j]);
      float w[4], b[4] = {0.f, 0.f, 0.f, 0.f}, out[4];
      lawa_load4(weight, i, w);
      if (bias) lawa_load4(bias, i, b);
      #pragma unroll
      for (int k = 0; k < 4; ++k) {
        out[k] = (v[j][k] - mean) * rstd * w[k];
        if (bias) out[k] += b[k];
      }
      lawa_store4(y + at, i, out);
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

template <typename D, typename O, int V>
__device__ void lawa_ln_backward_input_rows(const float* __restrict__ s, const O* __restrict__ grad_y,
                                            const float* __restrict__ grad_sum, const float* __restrict__ weight,
                                            const float* __restrict__ mean, const float* __restrict__ rstd,
                                            float* __restrict__ grad_x, D* __restrict__ grad_delta, long long rows,
                                            long long cols) {
  long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  int lane = threadIdx.x & 31;
  long long groups = cols >> 2, at = row * cols;
  float m = mean[row], r = rstd[row];
  float xhat[V][4], dyw[V][4];
  float a = 0.f, b = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    long long i = j * 32 + lane;
    if (i < groups) {
      float w[4];
      lawa_load4(s + at, i, xhat[j]);
      lawa_load4(grad_y + at, i, dyw[j]);
      lawa_load4(weight, i, w);
      #pragma unroll
      for (int k = 0; k < 4; ++k) {
        dyw[j][k] *= w[k];
        a += dyw[j][k];
        b += dyw[j][k] * (xhat[j][k] - m) * r;
        xhat[j][k] = (xhat[j][k] - m) * r;
      }
    }
  }
  float mean_a = lawa_warp_sum(a) / (float)cols;
  float mean_b = lawa_warp_sum(b) / (float)cols;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    long long i = j * 32 + lane;
    if (i < groups) {
      float g[4], gs[4] = {0.f, 0.f, 0.f, 0.f};
      if (grad_sum) lawa_load4(grad_sum + at, i, gs);
      #pragma unroll
      for (int k = 0; k < 4; ++k) {
        g[k] = r * (dyw[j][k] - mean_a - xhat[j][k] * mean_b);
        if (grad_sum) g[k] += gs[k];
      }
      if (grad_x) lawa_store4(grad_x + at, i, g);
      if (grad_delta) lawa_store4(grad_delta + at, i, g);
    }
  }
}

// Per-chunk column sums for the weight and bias gradients: block b covers 32 columns (tile
// b % tiles) of the rows of chunk b / tiles, 8 rows at a time (blockDim.x = 256);
// partial_weight[chunk, c] = sum of dy xhat, partial_bias[chunk, c] = sum of dy.
template <typename O>
__device__ void lawa_ln_backward_params(const float* __restrict__ s, const O* __restrict__ grad_y,
                                        const float* __restrict__ mean, const float* __restrict__ rstd,
                                        float* __restrict__ partial_weight, float* __restrict__ partial_bias,
                                        long long rows, long long cols, long long rows_per_chunk) {
  __shared__ float weight_sums[8][32];
  __shared__ float bias_sums[8][32];
  long long tiles = (cols + 31) / 32;
  long long tile = blockIdx.x % tiles, chunk = blockIdx.x / tiles;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  long long c = tile * 32 + lane;
  long long first = chunk * rows_per_chunk;
  long long last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  float w = 0.f, b = 0.f;
  if (c < cols) {
    for (long long row = first + warp; row < last; row += 8) {
      float dy = lawa_load(grad_y + row * cols, c);
      w += dy * (s[row * cols + c] - mean[row]) * rstd[row];
      b += dy;
    }
  }
  weight_sums[warp][lane] = w;
  bias_sums[warp][lane] = b;
  __syncthreads();
  if (warp == 0 && c < cols) {
    for (int k = 1; k < 8; ++k) {
      w += weight_sums[k][lane];
      b += bias_sums[k][lane];
    }
    partial_weight[chunk * cols + c] = w;
    partial_bias[chunk * cols + c] = b;
  }
}

#define LAWA_LN_KERNELS(D, DN, O, ON)                                                                         \
  extern "C" __global__ void lawa_ln_forward_##DN##_##ON(                                                     \
      const float* x, const D* delta, const float* weight, const float* bias, float* sum, O* y, float* mean, \
      float* rstd, long long rows, long long cols, float eps) {                                               \
    lawa_ln_forward(x, delta, weight, bias, sum, y, mean, rstd, rows, cols, eps);                             \
  }                                                                                                           \
  extern "C" __global__ void lawa_ln_backward_input_##DN##_##ON(                                              \
      const float* s, const O* grad_y, const float* grad_sum, const float* weight, const float* mean,         \
      const float* rstd, float* grad_x, D* grad_delta, long long rows, long long cols) {                      \
    lawa_ln_backward_input(s, grad_y, grad_sum, weight, mean, rstd, grad_x, grad_delta, rows, cols);          \
  }

LAWA_LN_KERNELS(lawa_bf16, bf16, lawa_bf16, bf16)
LAWA_LN_KERNELS(lawa_bf16, bf16, float, f32)
LAWA_LN_KERNELS(float, f32, lawa_bf16, bf16)
LAWA_LN_KERNELS(float, f32, float, f32)

// The register-resident kernels for V groups of 4 values a lane:
// lawa_ln_forward_v<V>_<delta>_<out> and lawa_ln_backward_input_v<V>_<delta>_<out>, for blocks of
// 32 * kLayerNormWarps = 256 threads.
#define LAWA_LN_FORWARD_ROWS(D, DN, O, ON, V)                                                                \
  extern "C" __global__ void __launch_bounds__(256) lawa_ln_forward_v##V##_##DN##_##ON(                       \
      const float* x, const D* delta, const float* weight, const float* bias, float* sum, O* y, float* mean, \
      float* rstd, long long rows, long long cols, float eps) {                                               \
    lawa_ln_forward_rows<D, O, V>(x, delta, weight, bias, sum, y, mean, rstd, rows, cols, eps);               \
  }
#define LAWA_LN_BACKWARD_ROWS(D, DN, O, ON, V)                                                              \
  extern "C" __global__ void __launch_bounds__(256) lawa_ln_backward_input_v##V##_##DN##_##ON(               \
      const float* s, const O* grad_y, const float* grad_sum, const float* weight, const float* mean,        \
      const float* rstd, float* grad_x, D* grad_delta, long long rows, long long cols) {                     \
    lawa_ln_backward_input_rows<D, O, V>(s, grad_y, grad_sum, weight, mean, rstd, grad_x, grad_delta, rows,  \
                                         cols);                                                              \
  }

// Rows of up to 256, 512, 1024 and (forward only) 2048 values; the launcher picks the smallest
// that fits.
#define LAWA_LN_ROW_KERNEL_SIZES(D, DN, O, ON) \
  LAWA_LN_FORWARD_ROWS(D, DN, O, ON, 2)        \
  LAWA_LN_FORWARD_ROWS(D, DN, O, ON, 4)        \
  LAWA_LN_FORWARD_ROWS(D, DN, O, ON, 8)        \
  LAWA_LN_FORWARD_ROWS(D, DN, O, ON, 16)       \
  LAWA_LN_BACKWARD_ROWS(D, DN, O, ON, 2)       \
  LAWA_LN_BACKWARD_ROWS(D, DN, O, ON, 4)       \
  LAWA_LN_BACKWARD_ROWS(D, DN, O, ON, 8)

LAWA_LN_ROW_KERNEL_SIZES(lawa_bf16, bf16, lawa_bf16, bf16)
LAWA_LN_ROW_KERNEL_SIZES(lawa_bf16, bf16, float, f32)
LAWA_LN_ROW_KERNEL_SIZES(float, f32, lawa_bf16, bf16)
LAWA_LN_ROW_KERNEL_SIZES(float, f32, float, f32)

extern "C" __global__ void lawa_ln_backward_params_bf16(const float* s, const lawa_bf16* grad_y, const float* mean,
                                                        const float* rstd, float* partial_weight,
                                                        float* partial_bias, long long rows, long long cols,
                                                        long long rows_per_chunk) {
  lawa_ln_backward_params(s, grad_y, mean, rstd, partial_weight, partial_bias, rows, cols, rows_per_chunk);
}

extern "C" __global__ void lawa_ln_backward_params_f32(const float* s, const float* grad_y, const float* mean,
                                                       const float* rstd, float* partial_weight,
                                                       float* partial_bias, long long rows, long long cols,
                                                       long long rows_per_chunk) {
  lawa_ln_backward_params(s, grad_y, mean, rstd, partial_weight, partial_bias, rows, cols, rows_per_chunk);
}
