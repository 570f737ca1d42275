// CUDA kernels of lawa's own, compiled at run time by NVRTC and launched through the CUDA driver
// API, both opened with dlopen: nothing here links against CUDA, so the shim builds and runs
// against a CPU-only libtorch too (where launching says why it cannot).
#pragma once

#include <cstddef>
#include <filesystem>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace lawa {

// NVRTC's binary (cubin) of `source` for `arch` (e.g. "sm_90"). `library`: the path of
// libnvrtc, or empty to find the one libtorch's wheel ships (see open_nvrtc). Throws with NVRTC's log on failure.
std::string nvrtc_compile(const std::string& source, const std::string& arch, const std::string& library);

// The version of NVRTC (`library`, or the one beside libtorch when empty), as "major.minor".
std::string nvrtc_version(const std::string& library);

// One source of kernels, compiled once per device on first use (for that device's
// architecture), every kernel of `kernels` looked up as soon as the binary is loaded (so that
// none is loaded later, inside a CUDA graph's capture, and a missing one is an error at once),
// and launched on libtorch's current stream of the device. A device whose compilation or
// loading failed is not tried again: its launches throw the first error.
class KernelModule {
 public:
  // `source`: the kernels, compiled with kernels/common.cuh before them; `kernels`: the names of
  // every kernel its launcher can ask for.
  KernelModule(const char* source, const char* name, std::vector<std::string> kernels);

  // The kernels the launcher can ask for.
  const std::vector<std::string>& kernels() const { return kernels_; }

  // The binary (cubin) of the source for `arch` (e.g. "sm_90"), checked to define every one of
  // kernels() (throws naming the first one missing). `library`: libnvrtc's path, or empty for
  // the one beside libtorch, whose binaries are kept between processes in the kernel cache
  // ($LAWA_CACHE/kernels, else $XDG_CACHE_HOME/lawa/kernels, else ~/.cache/lawa/kernels) under a
  // hash of the source, the architecture, NVRTC's options and its version; a cached binary that
  // fails the check (or that the driver refuses to load) is compiled again and replaced.
  std::string binary(const std::string& arch, const std::string& library) const;

  // Launches `kernel` (one of `kernels`) on `device` with `grid` x `block` threads; `args`
  // point at the kernel's arguments, in order.
  void launch(int device, const char* kernel, unsigned grid, unsigned block, std::vector<void*> args);

 private:
  struct Loaded {
    void* module = nullptr;
    void* context = nullptr;
    std::unordered_map<std::string, void*> functions;
  };
  Loaded& load(int device);
  Loaded compile_and_load(int device) const;
  // Where the kernel cache keeps the binary for `arch`; empty when there is no cache (a named
  // `library`, or no cache folder).
  std::filesystem::path cache_path(const std::string& arch, const std::string& library) const;

  std::string source_;
  const char* name_;
  std::vector<std::string> kernels_;
  std::mutex mutex_;
  std::unordered_map<int, Loaded> loaded_;
  std::unordered_map<int, std::string> failed_;  // device -> why it could not load
};

}  // namespace lawa
