//! The shim's C interface (`csrc/shim.h`). Tensors cross as the `torch::Tensor*` handles that
//! tch hands torch-sys ([`tch::Tensor::as_ptr`]).

use std::os::raw::{c_char, c_int};

/// `LAWA_REDUCE_*` in `shim.h`.
pub const REDUCE_SUM: c_int = 0;
pub const REDUCE_MAX: c_int = 1;
pub const REDUCE_MIN: c_int = 2;

/// `lawa_rendezvous` in `shim.h`.
#[repr(C)]
pub struct Rendezvous {
    pub host: *const c_char,
    pub port: c_int,
    pub rank: c_int,
    pub world_size: c_int,
    pub is_server: c_int,
    pub timeout_ms: i64,
    pub prefix: *const c_char,
}

/// An opaque `lawa_group`.
#[repr(C)]
pub struct Group {
    _private: [u8; 0],
}

/// An opaque `at::Tensor`.
pub type TensorHandle = *mut torch_sys::C_tensor;

extern "C" {
    pub fn lawa_has_gloo() -> c_int;
    pub fn lawa_has_nccl() -> c_int;
    pub fn lawa_group_gloo(
        r: *const Rendezvous,
        interface: *const c_char,
        error: *mut *mut c_char,
    ) -> *mut Group;
    pub fn lawa_group_nccl(r: *const Rendezvous, error: *mut *mut c_char) -> *mut Group;
    pub fn lawa_allreduce(
        group: *mut Group,
        tensors: *const TensorHandle,
        count: c_int,
        op: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    pub fn lawa_broadcast(
        group: *mut Group,
        tensors: *const TensorHandle,
        count: c_int,
        root: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    pub fn lawa_barrier(group: *mut Group, error: *mut *mut c_char) -> c_int;
    pub fn lawa_group_free(group: *mut Group);
    pub fn lawa_cuda_set_device(index: c_int);
}
