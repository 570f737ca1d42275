//! Data-parallel training for tch on libtorch's own collectives: c10d's Gloo (CPU) and NCCL
//! (CUDA) process groups, the engine PyTorch's DistributedDataParallel uses, reached through a
//! small C++ shim (`csrc/`) compiled against the libtorch headers torch-sys uses.
//!
//! * [`Launch`] reads where a process stands from torchrun's or Slurm's variables;
//! * [`ProcessGroup`] joins the ranks and runs all-reduce, broadcast and barrier;
//! * [`GradientReducer`] averages gradients in buckets as DDP does (after the backward pass:
//!   no overlap with it);
//! * [`ensure_identical`] checks, cheaply, that the ranks hold the same weights;
//! * [`run_local_ranks`] starts N ranks on this machine, like `torchrun --nproc-per-node N`.

mod consistency;
mod error;
mod ffi;
mod group;
mod launch;
mod reducer;
mod spawn;

pub use consistency::ensure_identical;
pub use error::DistError;
pub use group::{set_cuda_device, Backend, ProcessGroup, ReduceOp};
pub use launch::{Launch, DEFAULT_PORT, DEFAULT_TIMEOUT};
pub use reducer::{GradientReducer, ReducePrecision, DEFAULT_BUCKET_BYTES};
pub use spawn::{run_local_ranks, SpawnError, GRACE};
