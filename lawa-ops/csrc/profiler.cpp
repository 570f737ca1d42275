// libtorch's own profiler (Kineto, as torch.profiler uses it) behind a C interface for Rust:
// start it on the CPU alone or on the CPU and CUDA, then stop it and read each event back as
// one line of text, so that lawa's step and PyTorch's can be profiled the same way.

#include <cstdlib>
#include <cstring>
#include <new>
#include <set>
#include <stdexcept>
#include <string>

#include <kineto/ActivityType.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include "lawa_guarded.h"

namespace {

using torch::profiler::impl::ActivityType;

std::set<ActivityType> activities(int cuda) {
  std::set<ActivityType> out{ActivityType::CPU};
  if (cuda != 0) out.insert(ActivityType::CUDA);
  return out;
}

torch::profiler::impl::ProfilerConfig config() {
  return torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO);
}

// `name` with tabs and line breaks turned into spaces, to fit one field of a line.
std::string field(std::string name) {
  for (char& c : name)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return name;
}

char* copy(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

}  // namespace

extern "C" {

// Starts the profiler on this thread: CPU operators, and CUDA kernels and copies when `cuda`.
int lawa_profiler_start(int cuda, char** error) {
  return lawa_guarded(error, [&] {
    torch::autograd::profiler::prepareProfiler(config(), activities(cuda));
    torch::autograd::profiler::enableProfiler(config(), activities(cuda));
  });
}

// Stops the profiler; `*events` = one malloc'ed line per event (but the device's user
// annotations), "device<TAB>start ns<TAB>
// duration ns<TAB>name" (device: "cpu" or "cuda"), freed by the caller. With a non-empty
// `trace_path`, also writes the Chrome trace there (as torch.profiler's export_chrome_trace).
int lawa_profiler_stop(const char* trace_path, char** events, char** error) {
  return lawa_guarded(error, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (!result) throw std::runtime_error("the profiler was not running");
    std::string out;
    for (const auto& e : result->events()) {
      bool on_cuda = e.deviceType() == c10::DeviceType::CUDA;
      // Ranges that code marks on the device's timeline (record_function) are not kernels: they
      // span kernels and the gaps between them. (torch.profiler's is_user_annotation.)
      auto activity = static_cast<libkineto::ActivityType>(e.activityType());
      if (on_cuda && (activity == libkineto::ActivityType::USER_ANNOTATION ||
                      activity == libkineto::ActivityType::GPU_USER_ANNOTATION))
        continue;
      out += on_cuda ? "cuda\t" : "cpu\t";
      out += std::to_string(e.startNs()) + "\t" + std::to_string(e.durationNs()) + "\t";
      out += field(e.name()) + "\n";
    }
    if (trace_path != nullptr && trace_path[0] != '\0') result->save(trace_path);
    *events = copy(out);
  });
}

}  // extern "C"
