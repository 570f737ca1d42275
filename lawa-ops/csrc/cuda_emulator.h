// Just enough of CUDA to run lawa's kernel sources on the CPU, for their tests on machines
// without a GPU: one OS thread per CUDA thread, one block at a time, __syncthreads and the warp
// shuffles as barriers. Include after every other header (it defines CUDA's keywords as
// macros), then the kernel source, then launch with lawa_emu::launch.
#pragma once

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace lawa_emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// A reusable barrier for `count` threads.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      all_.notify_all();
    } else {
      all_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable all_;
  int count_;
  int arrived_ = 0;
  long generation_ = 0;
};

inline thread_local Dim3 thread_index;
inline thread_local Dim3 block_index;
inline Dim3 block_dim;
inline Dim3 grid_dim;
inline std::unique_ptr<Barrier> block_barrier;
inline std::vector<std::unique_ptr<Barrier>> warp_barriers;
inline std::vector<float> shuffle_slots;  // one per thread of the block
inline std::mutex launch_mutex;

inline float shuffle_xor(float value, int mask) {
  unsigned lane = thread_index.x, warp = lane / 32;
  shuffle_slots[lane] = value;
  warp_barriers[warp]->wait();
  float other = shuffle_slots[lane ^ mask];
  warp_barriers[warp]->wait();
  return other;
}

// Runs `kernel(args...)` on a grid of `grid` blocks of `block` threads (a multiple of 32), one
// launch at a time in the process (the block's state above, and `__shared__` arrays, are
// process-wide).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), unsigned grid, unsigned block, Args... args) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  block_dim = Dim3{block, 1, 1};
  grid_dim = Dim3{grid, 1, 1};
  block_barrier = std::make_unique<Barrier>(static_cast<int>(block));
  warp_barriers.clear();
  for (unsigned w = 0; w < block / 32; ++w) warp_barriers.push_back(std::make_unique<Barrier>(32));
  shuffle_slots.assign(block, 0.f);
  for (unsigned b = 0; b < grid; ++b) {
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([=] {
        block_index = Dim3{b, 0, 0};
        thread_index = Dim3{t, 0, 0};
        kernel(args...);
      });
    for (auto& thread : threads) thread.join();
  }
}

}  // namespace lawa_emu

struct uint2 {
  unsigned x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __shfl_xor_sync(unsigned /*mask*/, float value, int lane_mask) {
  return lawa_emu::shuffle_xor(value, lane_mask);
}
inline void __syncthreads() { lawa_emu::block_barrier->wait(); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

#define threadIdx lawa_emu::thread_index
#define blockIdx lawa_emu::block_index
#define blockDim lawa_emu::block_dim
#define gridDim lawa_emu::grid_dim
#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
#define __shared__ static
