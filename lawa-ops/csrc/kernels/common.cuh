// What lawa's kernels share (prepended to each kernel source before NVRTC compiles it): bf16 as
// its bits, so that no header is needed, and 16-byte vector reads and writes.

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

// The `i`-th group of 4 consecutive values (16 bytes of fp32, 8 of bf16): how the kernels that
// hold a whole row in registers read and write it.
__device__ __forceinline__ void lawa_load4(const float* p, long long i, float* v) {
  float4 f = reinterpret_cast<const float4*>(p)[i];
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
}
__device__ __forceinline__ void lawa_load4(const lawa_bf16* p, long long i, float* v) {
  uint2 u = reinterpret_cast<const uint2*>(p)[i];
  v[0] = __uint_as_float(u.x << 16);  // the lower address holds the lower bits
  v[1] = __uint_as_float(u.x & 0xffff0000u);
  v[2] = __uint_as_float(u.y << 16);
  v[3] = __uint_as_float(u.y & 0xffff0000u);
}
__device__ __forceinline__ void lawa_store4(float* p, long long i, const float* v) {
  float4 f;
  f.x = v[0];
  f.y = v[1];
  f.z = v[2];
  f.w = v[3];
  reinterpret_cast<float4*>(p)[i] = f;
}
__device__ __forceinline__ void lawa_store4(lawa_bf16* p, long long i, const float* v) {
  uint2 u;
  u.x = lawa_bf16_bits(v[0]) | (lawa_bf16_bits(v[1]) << 16);
  u.y = lawa_bf16_bits(v[2]) | (lawa_bf16_bits(v[3]) << 16);
  reinterpret_cast<uint2*>(p)[i] = u;
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
  __device__ static void load(const float* p, long long i, float* v) { lawa_load4(p, i, v); }
  __device__ static void store(float* p, long long i, const float* v) { lawa_store4(p, i, v); }
};


