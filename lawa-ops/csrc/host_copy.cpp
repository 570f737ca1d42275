// Copies from the GPU into host memory that leave the host free: each copy is queued on the
// device's current stream (`copy_(src, non_blocking=true)`, asynchronous when the destination
// is pinned) and one event is recorded after them, which another thread can wait on. Work queued
// later on that stream runs after the copies, so the values copied are those the stream had
// computed when the copies were queued.

#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <ATen/ATen.h>

#include <optional>
#include <stdexcept>

#include "lawa_guarded.h"

extern "C" {

// dsts[i].copy_(srcs[i], non_blocking=true) for every i; `*event` = an event recorded on the
// accelerator's current stream after the copies, or null when no tensor is on one (then every
// copy has completed on return).
int lawa_copy_async(at::Tensor* const* dsts, at::Tensor* const* srcs, int count, void** event,
                    char** error) {
  return lawa_guarded(error, [&] {
    c10::NoGradGuard no_grad;
    *event = nullptr;
    std::optional<c10::Device> device;
    for (int i = 0; i < count; ++i) {
      for (const at::Tensor* t : {srcs[i], dsts[i]}) {
        if (t->device().type() == c10::DeviceType::CPU) continue;
        if (device && *device != t->device()) throw std::invalid_argument("tensors on more than one accelerator");
        device = t->device();
      }
    }
    for (int i = 0; i < count; ++i) dsts[i]->copy_(*srcs[i], /*non_blocking=*/true);
    if (!device) return;
    c10::impl::VirtualGuardImpl guard(device->type());
    auto recorded = std::make_unique<c10::Event>(device->type());
    recorded->record(guard.getStream(*device));
    *event = recorded.release();
  });
}

// The functions below are called from a thread of lawa's own, whose current device is the
// runtime's default (0): each makes the event's device current for the call, and the guard
// restores the thread's device without creating a context on it (c10's MaybeSetDevice), so a
// run on cuda:N does not open a context on GPU 0.

// Blocks until the work before `event` has completed.
int lawa_event_synchronize(void* event, char** error) {
  return lawa_guarded(error, [&] {
    auto* recorded = static_cast<c10::Event*>(event);
    c10::DeviceGuard on(recorded->device());
    recorded->synchronize();
  });
}

// Whether the work before `event` has completed (never blocks).
int lawa_event_query(void* event, int* done, char** error) {
  return lawa_guarded(error, [&] {
    auto* recorded = static_cast<c10::Event*>(event);
    c10::DeviceGuard on(recorded->device());
    *done = recorded->query() ? 1 : 0;
  });
}

void lawa_event_free(void* event) {
  auto* recorded = static_cast<c10::Event*>(event);
  try {
    c10::DeviceGuard on(recorded->device());
    delete recorded;
  } catch (...) {
    delete recorded;  // no device to make current: the event's destructor restores its own
  }
}

}  // extern "C"
