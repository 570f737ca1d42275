// Cross-entropy over a language model's logits in two passes over the logits as they are (bf16
// or fp32), compiled at run time by NVRTC (see nvrtc_module.cpp) and launched by
// cross_entropy.cpp: no fp32 copy of the logits, no log-probabilities, no dense gradient of the
// loss is ever written. One block of threads per row (token); the arithmetic is fp32.
//
// Forward: lse = log(sum(exp(x))) over the first `vocab` columns of a row (one online pass:
// running maximum and rescaled sum), loss = lse - x[target]. Backward: d loss / d x =
// (exp(x - lse) - [column == target]) * grad for the first `vocab` columns, 0 for the padding
// columns after them and for ignored rows, rounded once to the logits' dtype. These are the
// values torch's log_softmax + nll_loss compute in fp32 (log-probability = x - lse), up to the
// summation order of the sum.
//
// Compiled without any header: bf16 is handled as its bits.

typedef unsigned short lawa_bf16;

#define LAWA_NEG_INF __int_as_float(0xff800000)
#define LAWA_NAN __int_as_float(0x7fc00000)

__device__ __forceinline__ float lawa_load(const lawa_bf16* p, long long i) {
  return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ float lawa_load(const float* p, long long i) { return p[i]; }

// Round to nearest even, as c10::BFloat16 does (NaN stays NaN).
__device__ __forceinline__ void lawa_store(lawa_bf16* p, long long i, float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p[i] = (lawa_bf16)0x7fc0;
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (lawa_bf16)(u >> 16);
}
__device__ __forceinline__ void lawa_store(float* p, long long i, float f) { p[i] = f; }

__device__ __forceinline__ unsigned lawa_bf16_bits(float f) {
  unsigned short b;
  lawa_store(&b, 0, f);
  return b;
}

// 16 bytes of values at once (8 bf16 or 4 fp32): a row read in vectors keeps four times as
// many bytes in flight per thread as one read value by value.
template <typename T>
struct LawaVector;

template <>
struct LawaVector<lawa_bf16> {
  static constexpr int n = 8;
  __device__ static void load(const lawa_bf16* p, long long i, float* v) {
    uint4 u = reinterpret_cast<const uint4*>(p)[i];
    unsigned w[4] = {u.x, u.y, u.z, u.w};
    for (int k = 0; k < 4; ++k) {
      v[2 * k] = __uint_as_float(w[k] << 16);  // the lower address holds the lower bits
      v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  }
  __device__ static void store(lawa_bf16* p, long long i, const float* v) {
    uint4 u;
    u.x = lawa_bf16_bits(v[0]) | (lawa_bf16_bits(v[1]) << 16);
    u.y = lawa_bf16_bits(v[2]) | (lawa_bf16_bits(v[3]) << 16);
    u.z = lawa_bf16_bits(v[4]) | (lawa_bf16_bits(v[5]) << 16);
    u.w = lawa_bf16_bits(v[6]) | (lawa_bf16_bits(v[7]) << 16);
    reinterpret_cast<uint4*>(p)[i] = u;
  }
};

template <>
struct LawaVector<float> {
  static constexpr int n = 4;
  __device__ static void load(const float* p, long long i, float* v) {
    float4 f = reinterpret_cast<const float4*>(p)[i];
    v[0] = f.x;
    v[1] = f.y;
    v[2] = f.z;
    v[3] = f.w;
  }
  __device__ static void store(float* p, long long i, const float* v) {
    float4 f;
    f.x = v[0];
    f.y = v[1];
    f.z = v[2];
    f.w = v[3];
    reinterpret_cast<float4*>(p)[i] = f;
  }
};

// A running softmax denominator: the maximum seen and the sum of exp(x - max).
struct LawaMaxSum {
  float m;
  float s;
};

__device__ __forceinline__ LawaMaxSum lawa_combine(LawaMaxSum a, LawaMaxSum b) {
  float m = fmaxf(a.m, b.m);
  if (m == LAWA_NEG_INF) return LawaMaxSum{m, 0.f};
  return LawaMaxSum{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ LawaMaxSum lawa_add(LawaMaxSum a, float x) {
  if (x > a.m) return LawaMaxSum{x, a.s * expf(a.m - x) + 1.f};
  if (x == LAWA_NEG_INF) return a;
  return LawaMaxSum{a.m, a.s + expf(x - a.m)};  // NaN x gives NaN
}

__device__ __forceinline__ LawaMaxSum lawa_warp_reduce(LawaMaxSum v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    LawaMaxSum w{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = lawa_combine(v, w);
  }
  return v;
}

// The combination over the whole block (blockDim.x a multiple of 32, at most 1024), valid in
// thread 0.
__device__ LawaMaxSum lawa_block_reduce(LawaMaxSum v) {
  __shared__ float maxima[32];
  __shared__ float sums[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = lawa_warp_reduce(v);
  if (lane == 0) {
    maxima[warp] = v.m;
    sums[warp] = v.s;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? LawaMaxSum{maxima[lane], sums[lane]} : LawaMaxSum{LAWA_NEG_INF, 0.f};
    v = lawa_warp_reduce(v);
  }
  return v;
}

// Row `blockIdx.x` of `logits` ([rows, cols], contiguous): lse[row], and losses[row] = lse -
// x[target] (0 for target == ignore_index, NaN for a target outside [0, vocab)). `vectorized`:
// the rows are read in LawaVector<T>s (cols a multiple of its n, logits 16-byte aligned).
template <typename T>
__device__ void lawa_ce_forward(const T* logits, const long long* targets, float* losses, float* lse,
                                long long cols, long long vocab, long long ignore_index, int vectorized) {
  long long row = blockIdx.x;
  const T* x = logits + row * cols;
  LawaMaxSum v{LAWA_NEG_INF, 0.f};
  if (vectorized) {
    constexpr int n = LawaVector<T>::n;
    long long vectors = (vocab + n - 1) / n;  // those holding a column of the vocabulary
    for (long long i = threadIdx.x; i < vectors; i += blockDim.x) {
      float values[n];
      LawaVector<T>::load(x, i, values);
      for (int k = 0; k < n; ++k)
        if (i * n + k < vocab) v = lawa_add(v, values[k]);
    }
  } else {
    for (long long c = threadIdx.x; c < vocab; c += blockDim.x) v = lawa_add(v, lawa_load(x, c));
  }
  v = lawa_block_reduce(v);
  if (threadIdx.x == 0) {
    float l = v.m + logf(v.s);
    long long t = targets[row];
    lse[row] = l;
    if (t == ignore_index)
      losses[row] = 0.f;
    else if (t < 0 || t >= vocab)
      losses[row] = LAWA_NAN;
    else
      losses[row] = l - lawa_load(x, t);
  }
}

// d loss / d x of column c of a row: (exp(x - lse) - [c == t]) * g, 0 past the vocabulary.
__device__ __forceinline__ float lawa_ce_gradient(float x, long long c, long long t, float lse, float g,
                                                  long long vocab) {
  if (c >= vocab) return 0.f;
  float d = expf(x - lse) * g;
  return c == t ? d - g : d;
}

// grad_logits[row] = (exp(x - lse) - [c == target]) * grad[row] for c < vocab, 0 after; a row
// whose target is ignore_index gets 0. `vectorized` as for the forward pass (grad_logits too).
template <typename T>
__device__ void lawa_ce_backward(const T* logits, const long long* targets, const float* lse,
                                 const float* grad, T* grad_logits, long long cols, long long vocab,
                                 long long ignore_index, int vectorized) {
  long long row = blockIdx.x;
  const T* x = logits + row * cols;
  T* out = grad_logits + row * cols;
  long long t = targets[row];
  float g = t == ignore_index ? 0.f : grad[row];
  float l = lse[row];
  if (vectorized) {
    constexpr int n = LawaVector<T>::n;
    for (long long i = threadIdx.x; i < cols / n; i += blockDim.x) {
      float values[n];
      LawaVector<T>::load(x, i, values);
      for (int k = 0; k < n; ++k) values[k] = lawa_ce_gradient(values[k], i * n + k, t, l, g, vocab);
      LawaVector<T>::store(out, i, values);
    }
  } else {
    for (long long c = threadIdx.x; c < cols; c += blockDim.x)
      lawa_store(out, c, lawa_ce_gradient(lawa_load(x, c), c, t, l, g, vocab));
  }
}

extern "C" __global__ void lawa_ce_forward_bf16(const lawa_bf16* logits, const long long* targets,
                                                float* losses, float* lse, long long cols,
                                                long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_forward(logits, targets, losses, lse, cols, vocab, ignore_index, vectorized);
}

extern "C" __global__ void lawa_ce_forward_f32(const float* logits, const long long* targets,
                                               float* losses, float* lse, long long cols,
                                               long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_forward(logits, targets, losses, lse, cols, vocab, ignore_index, vectorized);
}

extern "C" __global__ void lawa_ce_backward_bf16(const lawa_bf16* logits, const long long* targets,
                                                 const float* lse, const float* grad,
                                                 lawa_bf16* grad_logits, long long cols,
                                                 long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_backward(logits, targets, lse, grad, grad_logits, cols, vocab, ignore_index, vectorized);
}

extern "C" __global__ void lawa_ce_backward_f32(const float* logits, const long long* targets,
                                                const float* lse, const float* grad,
                                                float* grad_logits, long long cols,
                                                long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_backward(logits, targets, lse, grad, grad_logits, cols, vocab, ignore_index, vectorized);
}
