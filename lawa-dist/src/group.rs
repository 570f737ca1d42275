//! A process group: the ranks of one run, joined through a TCPStore rendezvous, and the three
//! collectives lawa needs, on libtorch's own Gloo (CPU tensors) or NCCL (CUDA tensors).

use std::ffi::CString;
use std::os::raw::{c_char, c_int};

use tch::Tensor;

use crate::ffi;
use crate::{DistError, Launch};

/// Which collective engine a group runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo, for tensors in host memory.
    Gloo,
    /// NCCL, for CUDA tensors.
    Nccl,
}

impl Backend {
    /// The backend PyTorch would choose for tensors on `device`.
    pub fn for_device(device: tch::Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    /// Whether this build of lawa has the backend (each needs headers at build time).
    pub fn is_built(self) -> bool {
        // SAFETY: the shim's functions take no arguments and only read a compile-time constant.
        unsafe {
            match self {
                Backend::Gloo => ffi::lawa_has_gloo() != 0,
                Backend::Nccl => ffi::lawa_has_nccl() != 0,
            }
        }
    }
}

/// Makes `cuda:index` this process's current CUDA device, so that NCCL and pinned-memory
/// copies use it rather than device 0 (does nothing in a build without NCCL).
pub fn set_cuda_device(index: usize) {
    // SAFETY: takes a plain integer; the shim catches any C++ exception.
    unsafe { ffi::lawa_cuda_set_device(index as c_int) }
}

/// How a collective combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// The ranks of one run, joined. Dropping it leaves the group.
///
/// ```no_run
/// # fn main() -> Result<(), lawa_dist::DistError> {
/// use lawa_dist::{Backend, Launch, ProcessGroup, ReduceOp};
/// // Started by `torchrun --no-python --nproc-per-node 2 my-binary`:
/// let launch = Launch::from_env()?.expect("run me under a launcher");
/// let group = ProcessGroup::join(Backend::Gloo, &launch)?;
/// let t = tch::Tensor::from_slice(&[launch.rank as f32 + 1.0]);
/// group.all_reduce(&[&t], ReduceOp::Sum)?; // 3.0 on both ranks
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut ffi::Group,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

// SAFETY: the group's C++ objects (store, backend) are thread-safe for use from one thread at a
// time, which `&self`/ownership ensure; the pointer is owned.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group `launch` describes on `backend`: rank 0 serves the rendezvous store
    /// unless a launcher's agent does. Blocks until every rank has joined or the timeout passes.
    pub fn join(backend: Backend, launch: &Launch) -> Result<ProcessGroup, DistError> {
        let setup = |message: String| DistError::Setup {
            rank: launch.rank,
            world_size: launch.world_size,
            addr: format!("{}:{}", launch.master_addr, launch.master_port),
            message,
        };
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| setup("MASTER_ADDR holds a NUL byte".into()))?;
        let interface = CString::new(launch.interface.clone().unwrap_or_default())
            .map_err(|_| setup("GLOO_SOCKET_IFNAME holds a NUL byte".into()))?;
        let prefix = CString::new(format!("lawa/{}/", launch.restart))
            .map_err(|_| setup("bad store prefix".into()))?;
        let rendezvous = ffi::Rendezvous {
            host: host.as_ptr(),
            port: c_int::from(launch.master_port),
            rank: launch.rank as c_int,
            world_size: launch.world_size as c_int,
            is_server: c_int::from(launch.is_leader() && !launch.agent_store),
            timeout_ms: launch.timeout.as_millis().min(i64::MAX as u128) as i64,
            prefix: prefix.as_ptr(),
        };
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the pointers live across the call; the shim copies what it keeps.
        let raw = unsafe {
            match backend {
                Backend::Gloo => ffi::lawa_group_gloo(&rendezvous, interface.as_ptr(), &mut error),
                Backend::Nccl => ffi::lawa_group_nccl(&rendezvous, &mut error),
            }
        };
        if raw.is_null() {
            return Err(setup(take_error(error)));
        }
        Ok(ProcessGroup {
            raw,
            rank: launch.rank,
            world_size: launch.world_size,
            backend,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The collective engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Combines each tensor in place across the ranks with `op` (every tensor contiguous, on
    /// the backend's device kind). The tensors' collectives are all started before any is
    /// waited on, so several buckets overlap.
    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> Result<(), DistError> {
        let op = match op {
            ReduceOp::Sum => ffi::REDUCE_SUM,
            ReduceOp::Max => ffi::REDUCE_MAX,
            ReduceOp::Min => ffi::REDUCE_MIN,
        };
        let handles = handles(tensors);
        self.call("all-reduce", |error| {
            // SAFETY: the handles are live tensors borrowed for the call.
            unsafe {
                ffi::lawa_allreduce(
                    self.raw,
                    handles.as_ptr(),
                    handles.len() as c_int,
                    op,
                    error,
                )
            }
        })
    }

    /// Overwrites each tensor, in place, with rank `root`'s.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), DistError> {
        let handles = handles(tensors);
        self.call("broadcast", |error| {
            // SAFETY: the handles are live tensors borrowed for the call.
            unsafe {
                ffi::lawa_broadcast(
                    self.raw,
                    handles.as_ptr(),
                    handles.len() as c_int,
                    root as c_int,
                    error,
                )
            }
        })
    }

    /// Waits until every rank has reached this call.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group is live.
        self.call("barrier", |error| unsafe {
            ffi::lawa_barrier(self.raw, error)
        })
    }

    fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut *mut c_char) -> c_int,
    ) -> Result<(), DistError> {
        let mut error: *mut c_char = std::ptr::null_mut();
        if f(&mut error) == 0 {
            return Ok(());
        }
        Err(DistError::Collective {
            op,
            rank: self.rank,
            message: take_error(error),
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the shim and is freed once.
        unsafe { ffi::lawa_group_free(self.raw) }
    }
}

fn handles(tensors: &[&Tensor]) -> Vec<ffi::TensorHandle> {
    tensors
        .iter()
        .map(|t| t.as_ptr() as ffi::TensorHandle)
        .collect()
}

/// The shim's message (freed here), on one line.
fn take_error(error: *mut c_char) -> String {
    // SAFETY: null or the message lawa_guarded allocated, not used again.
    unsafe { lawa_cxx::take_error(error) }
}
