// NVRTC and the CUDA driver API through dlopen (see nvrtc_module.h). The few driver and NVRTC
// types used are declared here as the opaque handles and ints they are.

#include "nvrtc_module.h"

#include <dirent.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <stdexcept>
#include <string>

#include <ATen/Context.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>

namespace lawa {
namespace {

using Result = int;  // CUresult and nvrtcResult: 0 is success

constexpr int kComputeCapabilityMajor = 75;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kComputeCapabilityMinor = 76;

template <typename F>
F symbol(void* library, const char* name, const char* library_name) {
  void* found = dlsym(library, name);
  if (found == nullptr) throw std::runtime_error(std::string(library_name) + " has no " + name);
  return reinterpret_cast<F>(found);
}

struct Nvrtc {
  Result (*create)(void** program, const char* source, const char* name, int headers, const char* const* contents,
                   const char* const* names);
  Result (*compile)(void* program, int count, const char* const* options);
  Result (*log_size)(void* program, size_t* size);
  Result (*log)(void* program, char* log);
  Result (*cubin_size)(void* program, size_t* size);
  Result (*cubin)(void* program, char* cubin);
  Result (*destroy)(void** program);
  const char* (*error_string)(Result result);
  Result (*version)(int* major, int* minor);

  explicit Nvrtc(void* h)
      : create(symbol<decltype(create)>(h, "nvrtcCreateProgram", "NVRTC")),
        compile(symbol<decltype(compile)>(h, "nvrtcCompileProgram", "NVRTC")),
        log_size(symbol<decltype(log_size)>(h, "nvrtcGetProgramLogSize", "NVRTC")),
        log(symbol<decltype(log)>(h, "nvrtcGetProgramLog", "NVRTC")),
        cubin_size(symbol<decltype(cubin_size)>(h, "nvrtcGetCUBINSize", "NVRTC")),
        cubin(symbol<decltype(cubin)>(h, "nvrtcGetCUBIN", "NVRTC")),
        destroy(symbol<decltype(destroy)>(h, "nvrtcDestroyProgram", "NVRTC")),
        error_string(symbol<decltype(error_string)>(h, "nvrtcGetErrorString", "NVRTC")),
        version(symbol<decltype(version)>(h, "nvrtcVersion", "NVRTC")) {}

  void check(Result r, const char* what) const {
    if (r != 0) throw std::runtime_error(std::string("NVRTC ") + what + ": " + error_string(r));
  }
};

struct Driver {
  Result (*init)(unsigned flags);
  Result (*device_get)(int* device, int ordinal);
  Result (*attribute)(int* value, int attribute, int device);
  Result (*primary_context)(void** context, int device);
  Result (*current_context)(void** context);
  Result (*set_current_context)(void* context);
  Result (*load_module)(void** module, const void* image);
  Result (*get_function)(void** function, void* module, const char* name);
  Result (*launch)(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared_bytes, void* stream, void** params, void** extra);
  Result (*error_string)(Result result, const char** text);

  explicit Driver(void* h)
      : init(symbol<decltype(init)>(h, "cuInit", "libcuda")),
        device_get(symbol<decltype(device_get)>(h, "cuDeviceGet", "libcuda")),
        attribute(symbol<decltype(attribute)>(h, "cuDeviceGetAttribute", "libcuda")),
        primary_context(symbol<decltype(primary_context)>(h, "cuDevicePrimaryCtxRetain", "libcuda")),
        current_context(symbol<decltype(current_context)>(h, "cuCtxGetCurrent", "libcuda")),
        set_current_context(symbol<decltype(set_current_context)>(h, "cuCtxSetCurrent", "libcuda")),
        load_module(symbol<decltype(load_module)>(h, "cuModuleLoadData", "libcuda")),
        get_function(symbol<decltype(get_function)>(h, "cuModuleGetFunction", "libcuda")),
        launch(symbol<decltype(launch)>(h, "cuLaunchKernel", "libcuda")),
        error_string(symbol<decltype(error_string)>(h, "cuGetErrorString", "libcuda")) {}

  // Throws on failure, naming the call by `what` (joined only then: launches are a hot path).
  template <typename... Parts>
  void check(Result r, const Parts&... what) const {
    if (r == 0) return;
    const char* text = nullptr;
    error_string(r, &text);
    std::string call = (std::string() + ... + std::string(what));
    throw std::runtime_error("CUDA driver " + call + ": " + (text ? text : "error " + std::to_string(r)));
  }
};

// The folder of the library that holds `symbol`.
std::string folder_of(void* symbol) {
  Dl_info info{};
  if (symbol == nullptr || dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "";
  std::string path = info.dli_fname;
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// NVRTC opens its builtins (libnvrtc-builtins.so.<version>) by name when it compiles; a wheel's
// copy sits beside it, where the loader does not look. Loading them from there first makes that
// name resolve to them.
void load_builtins(void* nvrtc) {
  std::string dir = folder_of(dlsym(nvrtc, "nvrtcCreateProgram"));
  DIR* listing = dir.empty() ? nullptr : opendir(dir.c_str());
  if (listing == nullptr) return;
  while (dirent* entry = readdir(listing)) {
    std::string name = entry->d_name;
    if (name.rfind("libnvrtc-builtins.so.", 0) == 0 && name.find(".alt") == std::string::npos)
      dlopen((dir + "/" + name).c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
  closedir(listing);
}

// The wheel's libnvrtc beside libtorch: site-packages/nvidia/cu*/lib/libnvrtc.so.<major> next to
// site-packages/torch/lib, the newest NVRTC of them; empty if there is none.
std::string wheel_nvrtc(const std::string& torch_lib) {
  std::string nvidia = torch_lib + "/../../nvidia";
  std::vector<std::string> found;
  if (DIR* cuda = opendir(nvidia.c_str())) {
    while (dirent* version = readdir(cuda)) {
      std::string lib = nvidia + "/" + version->d_name + "/lib";
      DIR* listing = version->d_name[0] == '.' ? nullptr : opendir(lib.c_str());
      if (listing == nullptr) continue;
      while (dirent* entry = readdir(listing)) {
        std::string name = entry->d_name;
        if (name.rfind("libnvrtc.so.", 0) == 0 && name.find("builtins") == std::string::npos &&
            name.find(".alt") == std::string::npos)
          found.push_back(lib + "/" + name);
      }
      closedir(listing);
    }
    closedir(cuda);
  }
  // By the major version after ".so." (cu13/lib/libnvrtc.so.13 over cuda_nvrtc/lib/libnvrtc.so.12).
  auto major = [](const std::string& path) { return std::atoi(path.c_str() + path.rfind(".so.") + 4); };
  std::sort(found.begin(), found.end(), [&](const std::string& a, const std::string& b) {
    return major(a) != major(b) ? major(a) < major(b) : a < b;
  });
  return found.empty() ? "" : found.back();
}

// NVRTC as libtorch finds it: the wheel's copy (see wheel_nvrtc); else through
// libcaffe2_nvrtc.so (torch's own NVRTC wrapper, linked against it with a run path), which loads
// NVRTC, found then by its soname; else by soname on the loader's path.
void* open_nvrtc(const std::string& library) {
  if (!library.empty()) {
    void* h = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) throw std::runtime_error("cannot open NVRTC at " + library + ": " + dlerror());
    return h;
  }
  std::string dir = folder_of(reinterpret_cast<void*>(&at::globalContext));  // libtorch_cpu.so's
  std::string wheel = dir.empty() ? "" : wheel_nvrtc(dir);
  if (!wheel.empty()) return open_nvrtc(wheel);
  std::string wrapper_error;
  if (!dir.empty() && dlopen((dir + "/libcaffe2_nvrtc.so").c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr)
    wrapper_error = dlerror();
  for (const char* name : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}) {
    void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (h == nullptr) h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (h != nullptr) return h;
  }
  throw std::runtime_error("NVRTC (libnvrtc.so) not found beside libtorch (" + dir + ")" +
                           (wrapper_error.empty() ? "" : ": " + wrapper_error));
}

const Nvrtc& nvrtc(const std::string& library) {
  static std::mutex mutex;
  static std::unordered_map<std::string, Nvrtc> opened;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = opened.find(library);
  if (found == opened.end()) {
    void* h = open_nvrtc(library);
    load_builtins(h);
    found = opened.emplace(library, Nvrtc(h)).first;
  }
  return found->second;
}

const Driver& driver() {
  static const Driver d = [] {
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) throw std::runtime_error(std::string("the CUDA driver (libcuda.so.1) is not here: ") + dlerror());
    Driver driver(h);
    driver.check(driver.init(0), "cuInit");
    return driver;
  }();
  return d;
}

// Makes `context` the thread's current CUDA context for its lifetime, then restores the one
// before (libtorch's runtime takes its current device from it).
class CurrentContext {
 public:
  explicit CurrentContext(void* context) {
    const Driver& d = driver();
    d.check(d.current_context(&previous_), "cuCtxGetCurrent");
    if (previous_ != context) {
      d.check(d.set_current_context(context), "cuCtxSetCurrent");
      switched_ = true;
    }
  }
  ~CurrentContext() {
    if (switched_) driver().set_current_context(previous_);
  }
  CurrentContext(const CurrentContext&) = delete;
  CurrentContext& operator=(const CurrentContext&) = delete;

 private:
  void* previous_ = nullptr;
  bool switched_ = false;
};

}  // namespace

std::string nvrtc_version(const std::string& library) {
  const Nvrtc& n = nvrtc(library);
  int major = 0, minor = 0;
  n.check(n.version(&major, &minor), "nvrtcVersion");
  return std::to_string(major) + "." + std::to_string(minor);
}

KernelModule::KernelModule(const char* source, const char* name, std::vector<std::string> kernels)
    : source_(std::string(
#include "common_cuh.inc"
                          ) +
              source),
      name_(name),
      kernels_(std::move(kernels)) {}

namespace {

// Destroys an NVRTC program however its compilation ends.
struct Program {
  const Nvrtc& n;
  void* handle = nullptr;
  ~Program() {
    if (handle != nullptr) n.destroy(&handle);
  }
};

}  // namespace

// NVRTC's options besides the architecture (part of the kernel cache's key).
constexpr const char* kNvrtcOptions = "--std=c++17";

std::string nvrtc_compile(const std::string& source, const std::string& arch, const std::string& library) {
  const Nvrtc& n = nvrtc(library);
  Program program{n};
  n.check(n.create(&program.handle, source.c_str(), "lawa.cu", 0, nullptr, nullptr), "nvrtcCreateProgram");
  std::string architecture = "--gpu-architecture=" + arch;
  const char* options[] = {architecture.c_str(), kNvrtcOptions};
  Result compiled = n.compile(program.handle, 2, options);
  size_t size = 0;
  if (compiled != 0) {
    n.log_size(program.handle, &size);
    std::string log(size, '\0');
    n.log(program.handle, log.data());
    throw std::runtime_error("NVRTC could not compile the kernels for " + arch + ": " + n.error_string(compiled) +
                             "\n" + log);
  }
  std::string out;
  n.check(n.cubin_size(program.handle, &size), "nvrtcGetCUBINSize");
  out.resize(size);
  n.check(n.cubin(program.handle, out.data()), "nvrtcGetCUBIN");
  return out;
}

namespace {

// Why `binary` is not a usable module for `kernels`, or empty: an ELF file (a cubin) whose
// string table names every kernel (symbol names sit there NUL-separated).
std::string unusable(const std::string& binary, const std::vector<std::string>& kernels) {
  if (binary.compare(0, 4, "\x7f" "ELF") != 0) return "not a cubin";
  for (const auto& kernel : kernels) {
    if (binary.find(std::string(1, '\0') + kernel + std::string(1, '\0')) == std::string::npos)
      return "lacks `" + kernel + "`, which the launcher uses";
  }
  return "";
}

// 64-bit FNV-1a: a hash that stays the same across builds and machines.
uint64_t fnv1a(const std::string& text, uint64_t hash = 14695981039346656037ull) {
  for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

// The kernel cache's folder (see KernelModule::binary), or empty when no base folder is set.
std::filesystem::path cache_folder() {
  if (const char* lawa = std::getenv("LAWA_CACHE"); lawa && *lawa) return std::filesystem::path(lawa) / "kernels";
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "lawa" / "kernels";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::filesystem::path(home) / ".cache" / "lawa" / "kernels";
  return {};
}

std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return in ? std::string(std::istreambuf_iterator<char>(in), {}) : "";
}

// Writes `bytes` to `path` through a temporary file renamed over it, so that a reader never
// sees half a binary. A cache that cannot be written is no error: the next process compiles.
void write_atomically(const std::filesystem::path& path, const std::string& bytes) {
  std::error_code ignored;
  std::filesystem::create_directories(path.parent_path(), ignored);
  auto partial = path;
  partial += "." + std::to_string(getpid()) + "-" + std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id())) +
             ".partial";
  std::ofstream out(partial, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();  // a write that fails late (a full disk, a quota) fails here
  if (out) std::filesystem::rename(partial, path, ignored);
  if (!out || ignored) std::filesystem::remove(partial, ignored);
}

}  // namespace

std::filesystem::path KernelModule::cache_path(const std::string& arch, const std::string& library) const {
  std::filesystem::path folder = library.empty() ? cache_folder() : std::filesystem::path();
  if (folder.empty()) return folder;
  std::string stem = name_;
  stem = stem.substr(0, stem.rfind('.'));
  // NVRTC's major.minor: a patch release reuses the binaries of the one before.
  std::string key = arch + '\0' + kNvrtcOptions + '\0' + nvrtc_version(library) + '\0' + source_;
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fnv1a(key)));
  return folder / (stem + "-" + arch + "-" + hash + ".cubin");
}

std::string KernelModule::binary(const std::string& arch, const std::string& library) const {
  std::filesystem::path path = cache_path(arch, library);
  if (!path.empty()) {
    std::string cached = read_all(path);
    if (!cached.empty() && unusable(cached, kernels_).empty()) return cached;
  }
  std::string out = nvrtc_compile(source_, arch, library);
  std::string why = unusable(out, kernels_);
  if (!why.empty()) throw std::runtime_error("the kernels of " + std::string(name_) + " compiled for " + arch + ": " + why);
  if (!path.empty()) write_atomically(path, out);
  return out;
}

KernelModule::Loaded& KernelModule::load(int device) {
  auto found = loaded_.find(device);
  if (found != loaded_.end()) return found->second;
  auto failed = failed_.find(device);
  if (failed != failed_.end()) throw std::runtime_error(failed->second);
  try {
    return loaded_.emplace(device, compile_and_load(device)).first->second;
  } catch (const std::exception& e) {
    failed_.emplace(device, std::string(name_) + " on CUDA device " + std::to_string(device) + ": " + e.what());
    throw std::runtime_error(failed_.at(device));
  }
}

KernelModule::Loaded KernelModule::compile_and_load(int device) const {
  const Driver& d = driver();
  int handle = 0, major = 0, minor = 0;
  d.check(d.device_get(&handle, device), "cuDeviceGet");
  d.check(d.attribute(&major, kComputeCapabilityMajor, handle), "cuDeviceGetAttribute");
  d.check(d.attribute(&minor, kComputeCapabilityMinor, handle), "cuDeviceGetAttribute");
  std::string arch = "sm_" + std::to_string(major) + std::to_string(minor);
  std::string cubin = binary(arch, "");
  Loaded loaded;
  d.check(d.primary_context(&loaded.context, handle), "cuDevicePrimaryCtxRetain");
  CurrentContext current(loaded.context);
  if (d.load_module(&loaded.module, cubin.data()) != 0) {
    // A cached binary the driver refuses (damaged past what binary() checks): compiled afresh.
    std::error_code ignored;
    std::filesystem::remove(cache_path(arch, ""), ignored);
    cubin = binary(arch, "");
    d.check(d.load_module(&loaded.module, cubin.data()), "cuModuleLoadData");
  }
  for (const auto& kernel : kernels_) {
    void* function = nullptr;
    d.check(d.get_function(&function, loaded.module, kernel.c_str()), "cuModuleGetFunction ", kernel);
    loaded.functions.emplace(kernel, function);
  }
  return loaded;
}

void KernelModule::launch(int device, const char* kernel, unsigned grid, unsigned block, std::vector<void*> args) {
  if (grid == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  Loaded& loaded = load(device);
  auto found = loaded.functions.find(kernel);
  if (found == loaded.functions.end())
    throw std::logic_error(std::string(name_) + " has no kernel `" + kernel + "` among those its launcher names");
  const Driver& d = driver();
  CurrentContext current(loaded.context);
  c10::Device where(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
  c10::Stream stream = c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(where);
  d.check(d.launch(found->second, grid, 1, 1, block, 1, 1, 0, stream.native_handle(), args.data(), nullptr),
          "launching ", name_, "/", kernel);
}

}  // namespace lawa
