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
// Needs common.cuh, which the launcher prepends.

// A running softmax denominator: the maximum seen and the sum of exp(x - max).
struct LawaMaxSum {
  float m;
  float s;
};

// exp(from - to) for from <= to, 1 where they are equal (infinities included, so that an inf
// logit gives an inf or NaN sum wherever it falls among the threads).
__device__ __forceinline__ float lawa_rescale(float from, float to) { return from == to ? 1.f : expf(from - to); }

__device__ __forceinline__ LawaMaxSum lawa_combine(LawaMaxSum a, LawaMaxSum b) {
  float m = fmaxf(a.m, b.m);
  if (m == LAWA_NEG_INF) return LawaMaxSum{m, a.s + b.s};  // nothing yet (or NaN, kept)
  return LawaMaxSum{m, a.s * lawa_rescale(a.m, m) + b.s * lawa_rescale(b.m, m)};
}

// Adds the first `count` of N values at once: their maximum first, so that the running sum is
// rescaled once. (The loops run to N, a constant, so that `x` stays in registers.)
template <int N>
__device__ __forceinline__ LawaMaxSum lawa_add(LawaMaxSum a, const float (&x)[N], int count) {
  float m = a.m;
  // A maximum that keeps a NaN (fmaxf drops it): a NaN logit must make the loss NaN, as in
  // torch, wherever it falls, also when it is all a thread has seen so far.
  for (int k = 0; k < N; ++k)
    if (k < count && (x[k] > m || x[k] != x[k])) m = x[k];
  if (m == LAWA_NEG_INF) return a;  // only -inf so far
  float s = a.s * lawa_rescale(a.m, m);
  for (int k = 0; k < N; ++k)
    if (k < count) s += lawa_rescale(x[k], m);  // a NaN value gives NaN
  return LawaMaxSum{m, s};
}

__device__ __forceinline__ LawaMaxSum lawa_warp_reduce(LawaMaxSum v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    LawaMaxSum w{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = lawa_combine(v, w);
  }
  return v;
}

// The combination over the whole block (blockDim.x a multiple of 32, at most 1024), valid in
// thread 0. Ends with a barrier, so that a second call cannot overwrite what warp 0 reads.
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
  __syncthreads();
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
#pragma unroll 2
    for (long long i = threadIdx.x; i < vectors; i += blockDim.x) {
      float values[n];
      LawaVector<T>::load(x, i, values);
      long long left = vocab - i * n;  // only the last vector reaches past the vocabulary
      v = lawa_add(v, values, left < n ? (int)left : n);
    }
  } else {
    for (long long c = threadIdx.x; c < vocab; c += blockDim.x) {
      float value[1] = {lawa_load(x, c)};
      v = lawa_add(v, value, 1);
    }
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

extern "C" __global__ void __launch_bounds__(512) lawa_ce_forward_bf16(const lawa_bf16* logits, const long long* targets,
                                                float* losses, float* lse, long long cols,
                                                long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_forward(logits, targets, losses, lse, cols, vocab, ignore_index, vectorized);
}

extern "C" __global__ void __launch_bounds__(512) lawa_ce_forward_f32(const float* logits, const long long* targets,
                                               float* losses, float* lse, long long cols,
                                               long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_forward(logits, targets, losses, lse, cols, vocab, ignore_index, vectorized);
}

extern "C" __global__ void __launch_bounds__(512) lawa_ce_backward_bf16(const lawa_bf16* logits, const long long* targets,
                                                 const float* lse, const float* grad,
                                                 lawa_bf16* grad_logits, long long cols,
                                                 long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_backward(logits, targets, lse, grad, grad_logits, cols, vocab, ignore_index, vectorized);
}

extern "C" __global__ void __launch_bounds__(512) lawa_ce_backward_f32(const float* logits, const long long* targets,
                                                const float* lse, const float* grad,
                                                float* grad_logits, long long cols,
                                                long long vocab, long long ignore_index, int vectorized) {
  lawa_ce_backward(logits, targets, lse, grad, grad_logits, cols, vocab, ignore_index, vectorized);
}
