// CUDA graphs through libtorch's at::cuda::CUDAGraph, as torch.cuda.graph drives it: the
// device synchronized and the caching allocators' free blocks released (device memory, and the
// pinned host memory whose pending events a capture may not query), then the work the
// caller queues is recorded on a side stream (a graph must not be captured on the default
// stream), its allocations taken from the graph's private memory pool, and the stream the caller
// had is current again afterwards. A replay queues the recorded kernels, with the same memory,
// on the caller's current stream.
//
// A capture that fails (CUDA invalidates it when the work synchronizes or reads a value on the
// host) leaves libtorch's allocators recording into the graph's pool: CUDAGraph::capture_end
// throws before it ends that, and a later capture would then fail too; and the CUDA random
// generator stays marked as capturing, so that every random op after would fail. So a failed
// capture is abandoned here: the stream's capture ended if it is still open (and the error that
// leaves cleared), the allocators' recording ended and the pool released, the generator's mark
// cleared.
//
// Compiled only when libtorch has CUDA and the CUDA headers were found at build time
// (lawa-ops's Rust side says so otherwise). The few CUDA runtime calls are looked up in the
// runtime libtorch loaded, so that nothing here links against it.

#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <dlfcn.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "lawa_guarded.h"

namespace {

// The CUDA runtime's `name`, from the runtime libtorch loaded.
template <typename F>
F runtime(const char* name) {
  void* found = dlsym(RTLD_DEFAULT, name);
  if (found == nullptr) throw std::runtime_error(std::string("the CUDA runtime has no ") + name);
  return reinterpret_cast<F>(found);
}

// Runs `f`, ignoring what it throws (cleaning up after a failure already being reported).
template <typename F>
void quietly(F&& f) {
  try {
    f();
  } catch (...) {
  }
}

// A graph, and while it is being captured, what the capture changed: the current device and
// the device's current stream. A CUDAGraph itself, to reach what abandoning a capture needs.
struct LawaGraph : at::cuda::CUDAGraph {
  c10::DeviceIndex device;
  c10::DeviceIndex previous_device = -1;
  std::optional<c10::cuda::CUDAStream> previous_stream;
  // The stream the capture runs on, once chosen (before, capture_stream_ is the caller's).
  std::optional<c10::cuda::CUDAStream> side_stream;

  explicit LawaGraph(c10::DeviceIndex device) : device(device) {}

  // Puts back the device and stream current before the capture.
  void restore() {
    if (previous_stream) c10::cuda::setCurrentCUDAStream(*previous_stream);
    previous_stream.reset();
    if (previous_device >= 0) c10::cuda::set_device(previous_device);
    previous_device = -1;
  }

  // Undoes what a capture that failed left behind (see the file's note), then restores.
  void abandon() {
    if (side_stream) quietly([&] { end_stream_capture(side_stream->stream()); });
    if (!capture_ended_) {  // once it has ended, the destructor releases the pool
      for (auto& [state, increment] : captured_generator_states_) state->capturing_ = false;
      if (mempool_id_.first != 0 || mempool_id_.second != 0) {
        quietly([&] { c10::cuda::CUDACachingAllocator::endAllocateToPool(capture_dev_, mempool_id_); });
        quietly([&] { at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(mempool_id_); });
        quietly([&] { c10::cuda::CUDACachingAllocator::releasePool(capture_dev_, mempool_id_); });
        quietly([&] { at::getHostAllocator(at::kCUDA)->release_pool(mempool_id_); });
      }
    }
    restore();
  }

  // Ends `stream`'s capture if one is open, dropping what it recorded, and clears the error
  // that leaves behind (c10 would report it at the next kernel launch).
  static void end_stream_capture(cudaStream_t stream) {
    auto is_capturing = runtime<cudaError_t (*)(cudaStream_t, cudaStreamCaptureStatus*)>("cudaStreamIsCapturing");
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (is_capturing(stream, &status) != cudaSuccess || status == cudaStreamCaptureStatusNone) return;
    cudaGraph_t partial = nullptr;
    runtime<cudaError_t (*)(cudaStream_t, cudaGraph_t*)>("cudaStreamEndCapture")(stream, &partial);
    if (partial != nullptr) runtime<cudaError_t (*)(cudaGraph_t)>("cudaGraphDestroy")(partial);
    runtime<cudaError_t (*)()>("cudaGetLastError")();
  }
};

}  // namespace

extern "C" {

// Starts recording the CUDA work queued on `device` from this thread into a new graph (*graph).
// The work queued until lawa_cuda_graph_end runs nothing: it is recorded.
int lawa_cuda_graph_begin(int device, void** graph, char** error) {
  return lawa_guarded(error, [&] {
    *graph = nullptr;
    if (device < 0 || device >= c10::cuda::device_count()) {
      throw std::invalid_argument("no CUDA device " + std::to_string(device));
    }
    auto index = static_cast<c10::DeviceIndex>(device);
    auto g = std::make_unique<LawaGraph>(index);
    g->previous_device = c10::cuda::ExchangeDevice(index);
    try {
      c10::cuda::device_synchronize();
      c10::cuda::CUDACachingAllocator::emptyCache();
      at::getHostAllocator(at::kCUDA)->empty_cache();
      g->previous_stream = c10::cuda::getCurrentCUDAStream(index);
      g->side_stream = c10::cuda::getStreamFromPool(false, index);
      c10::cuda::setCurrentCUDAStream(*g->side_stream);
      g->capture_begin();
    } catch (...) {
      g->abandon();
      throw;
    }
    *graph = g.release();
  });
}

// Ends the recording lawa_cuda_graph_begin started, and makes the graph ready to replay. The
// device and stream current before the capture are current again, whether or not it succeeds;
// a capture that failed is abandoned (see the file's note) and the graph cannot be replayed.
int lawa_cuda_graph_end(void* graph, char** error) {
  auto* g = static_cast<LawaGraph*>(graph);
  return lawa_guarded(error, [&] {
    try {
      g->capture_end();
    } catch (...) {
      g->abandon();
      throw;
    }
    g->restore();
  });
}

// Queues the recorded work on the graph's device's current stream.
int lawa_cuda_graph_replay(void* graph, char** error) {
  auto* g = static_cast<LawaGraph*>(graph);
  return lawa_guarded(error, [&] {
    c10::DeviceIndex previous = c10::cuda::ExchangeDevice(g->device);
    try {
      g->replay();
    } catch (...) {
      c10::cuda::set_device(previous);
      throw;
    }
    c10::cuda::set_device(previous);
  });
}

void lawa_cuda_graph_free(void* graph) { delete static_cast<LawaGraph*>(graph); }

}  // extern "C"
