// The NCCL (CUDA) process group, compiled when libtorch has CUDA and the CUDA headers are at
// hand (build.rs defines LAWA_WITH_NCCL); otherwise a constructor that says why it is missing.

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef LAWA_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "shim.h"

extern "C" {

int lawa_has_nccl(void) {
#ifdef LAWA_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

lawa_group* lawa_group_nccl(const lawa_rendezvous* r, char** error) {
  lawa_group* group = nullptr;
  lawa_guarded(error, [&] {
#ifdef LAWA_WITH_NCCL
    auto store = lawa_make_store(r);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(r->timeout_ms);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, r->rank, r->world_size, options);
    group = new lawa_group{store, backend};
#else
    throw std::runtime_error(
        "this lawa was built without NCCL (it needs a CUDA libtorch and the CUDA headers that "
        "scripts/bootstrap.sh fetches; rebuild after running it)");
#endif
  });
  return group;
}

// Makes `index` this process's current CUDA device (NCCL and pinned copies use it); a no-op
// without CUDA.
void lawa_cuda_set_device(int index) {
#ifdef LAWA_WITH_NCCL
  try {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
  } catch (...) {
  }
#else
  (void)index;
#endif
}

}  // extern "C"
