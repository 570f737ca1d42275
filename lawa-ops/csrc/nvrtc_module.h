// CUDA kernels of lawa's own, compiled at run time by NVRTC and launched through the CUDA driver
// API, both opened with dlopen: nothing here links against CUDA, so the shim builds and runs
// against a CPU-only libtorch too (where launching says why it cannot).
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace lawa {

// NVRTC's binary (cubin) of `source` for `arch` (e.g. "sm_90"). `library`: the path of
// libnvrtc, or empty to find the one libtorch loads. Throws with NVRTC's log on failure.
std::string nvrtc_compile(const std::string& source, const std::string& arch, const std::string& library);

// nvrtc_compile, then a check that the binary defines every kernel in `kernels` (the names its
// launcher can ask for): throws naming the first one missing. What the tests run, so that a
// name the launcher spells differently from the source fails without a GPU.
std::string nvrtc_compile_checked(const std::string& source, const std::string& arch, const std::string& library,
                                  const std::vector<std::string>& kernels);

// One source of kernels, compiled once per device on first use (for that device's
// architecture) and launched on libtorch's current stream of the device.
class KernelModule {
 public:
  // `source`: the kernels, compiled with kernels/common.cuh before them.
  KernelModule(const char* source, const char* name);

  // The whole source NVRTC compiles (common.cuh, then the kernels).
  const std::string& source() const { return source_; }

  // Launches `kernel` (an extern "C" __global__ function of the source) on `device` with
  // `grid` x `block` threads; `args` point at the kernel's arguments, in order.
  void launch(int device, const char* kernel, unsigned grid, unsigned block, std::vector<void*> args);

 private:
  struct Loaded {
    void* module = nullptr;
    void* context = nullptr;
    std::unordered_map<std::string, void*> functions;
  };
  Loaded& load(int device);

  std::string source_;
  const char* name_;
  std::mutex mutex_;
  std::unordered_map<int, Loaded> loaded_;
};

}  // namespace lawa
