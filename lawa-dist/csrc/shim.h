// C interface of the c10d shim (see c10d_shim.cpp, nccl.cpp and src/ffi.rs).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "lawa_guarded.h"

enum { LAWA_REDUCE_SUM = 0, LAWA_REDUCE_MAX = 1, LAWA_REDUCE_MIN = 2 };

// Where the ranks meet: a TCPStore at host:port, served by one of them unless is_server is 0
// for all (torchrun's agent serves it).
struct lawa_rendezvous {
  const char* host;
  int port;
  int rank;
  int world_size;
  int is_server;
  std::int64_t timeout_ms;
  const char* prefix;  // keys of this group in the store, apart from other groups' and rounds'
};

struct lawa_group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

c10::intrusive_ptr<c10d::Store> lawa_make_store(const lawa_rendezvous* r);

extern "C" {
int lawa_has_gloo(void);
int lawa_has_nccl(void);
lawa_group* lawa_group_gloo(const lawa_rendezvous* r, const char* interface, char** error);
lawa_group* lawa_group_nccl(const lawa_rendezvous* r, char** error);
int lawa_allreduce(lawa_group* group, at::Tensor* const* tensors, int count, int op, char** error);
int lawa_broadcast(lawa_group* group, at::Tensor* const* tensors, int count, int root, char** error);
int lawa_barrier(lawa_group* group, char** error);
void lawa_group_free(lawa_group* group);
void lawa_cuda_set_device(int index);
}
