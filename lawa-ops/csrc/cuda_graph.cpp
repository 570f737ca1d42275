// CUDA graphs through libtorch's at::cuda::CUDAGraph, as torch.cuda.graph drives it: the
// device synchronized and the caching allocators' free blocks released (device memory, and the
// pinned host memory whose pending events a capture may not query), then the work the
// caller queues is recorded on a side stream (a graph must not be captured on the default
// stream), its allocations taken from the graph's private memory pool, and the stream the caller
// had is current again afterwards. A replay queues the recorded kernels, with the same memory,
// on the caller's current stream.
//
// Compiled only when libtorch has CUDA and the CUDA headers were found at build time (the
// build defines LAWA_WITH_CUDA_GRAPHS; lawa-ops's Rust side says so otherwise).

#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "lawa_guarded.h"

namespace {

// A graph, and while it is being captured, what the capture changed: the current device and
// the device's current stream.
struct LawaGraph {
  at::cuda::CUDAGraph graph;
  c10::DeviceIndex device;
  c10::DeviceIndex previous_device = -1;
  std::optional<c10::cuda::CUDAStream> previous_stream;

  explicit LawaGraph(c10::DeviceIndex device) : device(device) {}

  // Puts back the device and stream current before the capture.
  void restore() {
    if (previous_stream) c10::cuda::setCurrentCUDAStream(*previous_stream);
    previous_stream.reset();
    if (previous_device >= 0) c10::cuda::set_device(previous_device);
    previous_device = -1;
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
    c10::cuda::device_synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
    at::getHostAllocator(at::kCUDA)->empty_cache();
    g->previous_stream = c10::cuda::getCurrentCUDAStream(index);
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, index));
    try {
      g->graph.capture_begin();
    } catch (...) {
      g->restore();
      throw;
    }
    *graph = g.release();
  });
}

// Ends the recording lawa_cuda_graph_begin started, and makes the graph ready to replay. The
// device and stream current before the capture are current again, whether or not it succeeds.
int lawa_cuda_graph_end(void* graph, char** error) {
  auto* g = static_cast<LawaGraph*>(graph);
  return lawa_guarded(error, [&] {
    try {
      g->graph.capture_end();
    } catch (...) {
      g->restore();
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
      g->graph.replay();
    } catch (...) {
      c10::cuda::set_device(previous);
      throw;
    }
    c10::cuda::set_device(previous);
  });
}

void lawa_cuda_graph_free(void* graph) { delete static_cast<LawaGraph*>(graph); }

}  // extern "C"
