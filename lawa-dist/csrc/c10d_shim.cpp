// The part of libtorch's c10d that lawa uses, behind a C interface for Rust: a TCPStore
// rendezvous, a Gloo (CPU) or NCCL (CUDA, see nccl.cpp) process group, and three collectives
// (all-reduce, broadcast, barrier). Tensors arrive as `at::Tensor*`, the handle tch passes
// to torch-sys. Every entry point catches C++ exceptions and returns them as a message.

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include "shim.h"

namespace {

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case LAWA_REDUCE_MAX: return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case LAWA_REDUCE_MIN: return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default: return c10d::ReduceOp(c10d::ReduceOp::SUM);
  }
}

}  // namespace

c10::intrusive_ptr<c10d::Store> lawa_make_store(const lawa_rendezvous* r) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(r->port);
  options.isServer = r->is_server != 0;
  options.numWorkers = static_cast<std::size_t>(r->world_size);
  options.waitWorkers = false;
  options.timeout = std::chrono::milliseconds(r->timeout_ms);
  auto store = c10::make_intrusive<c10d::TCPStore>(std::string(r->host), options);
  // lawa's keys apart from a torchrun agent's own and from earlier restarts' rounds.
  return c10::make_intrusive<c10d::PrefixStore>(std::string(r->prefix), store);
}

extern "C" {

int lawa_has_gloo(void) {
#ifdef USE_C10D_GLOO
  return 1;
#else
  return 0;
#endif
}

lawa_group* lawa_group_gloo(const lawa_rendezvous* r, const char* interface, char** error) {
  lawa_group* group = nullptr;
  lawa_guarded(error, [&] {
#ifdef USE_C10D_GLOO
    auto store = lawa_make_store(r);
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(r->timeout_ms));
    if (interface != nullptr && interface[0] != '\0') {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else if (std::strcmp(r->host, "127.0.0.1") == 0 || std::strcmp(r->host, "localhost") == 0) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, r->rank, r->world_size, options);
    group = new lawa_group{store, backend};
#else
    throw std::runtime_error(
        "this lawa was built without gloo's headers (run scripts/bootstrap.sh, then rebuild)");
#endif
  });
  return group;
}

int lawa_allreduce(lawa_group* group, at::Tensor* const* tensors, int count, int op, char** error) {
  return lawa_guarded(error, [&] {
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    // One collective per tensor, all started before any is waited on: buckets overlap.
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    std::vector<std::vector<at::Tensor>> held(count);
    for (int i = 0; i < count; ++i) {
      held[i].push_back(*tensors[i]);
      works.push_back(group->backend->allreduce(held[i], options));
    }
    for (auto& work : works) work->wait();
  });
}

int lawa_broadcast(lawa_group* group, at::Tensor* const* tensors, int count, int root, char** error) {
  return lawa_guarded(error, [&] {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    std::vector<std::vector<at::Tensor>> held(count);
    for (int i = 0; i < count; ++i) {
      held[i].push_back(*tensors[i]);
      works.push_back(group->backend->broadcast(held[i], options));
    }
    for (auto& work : works) work->wait();
  });
}

int lawa_barrier(lawa_group* group, char** error) {
  return lawa_guarded(error, [&] { group->backend->barrier()->wait(); });
}

void lawa_group_free(lawa_group* group) {
  try {
    delete group;
  } catch (...) {
  }
}

}  // extern "C"
