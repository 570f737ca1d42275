//! CUDA graphs: the kernels a piece of GPU work launches, recorded once and replayed with one
//! launch, so that the host no longer queues them one by one (libtorch's `at::cuda::CUDAGraph`,
//! driven as `torch.cuda.graph` drives it).
//!
//! A replay runs the recorded kernels on the memory they were recorded with: inputs are tensors
//! allocated before the capture and refilled in place before each replay, and outputs are the
//! tensors the capture returned, overwritten by each replay. Work that reads a value on the host,
//! allocates host-visible memory or synchronizes cannot be recorded; libtorch refuses it and the
//! capture fails with its message. Every kernel the work needs must have run once before the
//! capture (lazily compiled or loaded kernels, cuBLAS and cuDNN plans), as PyTorch asks.
//!
//! ```no_run
//! use tch::{Device, Kind, Tensor};
//! let device = Device::Cuda(0);
//! let x = Tensor::zeros([4], (Kind::Float, device));
//! let _ = (&x * 2.0 + 1.0); // a warm-up run, outside the capture
//! let (graph, y) = lawa_ops::CudaGraph::capture(device, || {
//!     Ok::<_, lawa_ops::OpsError>(&x * 2.0 + 1.0)
//! })?;
//! let _ = x.shallow_clone().fill_(3.0);
//! graph.replay()?;
//! assert_eq!(Vec::<f32>::try_from(&y).unwrap(), [7.0; 4]);
//! # Ok::<(), lawa_ops::OpsError>(())
//! ```

use std::os::raw::c_void;
#[cfg(lawa_cuda_graphs)]
use std::os::raw::{c_char, c_int};

use tch::Device;

use crate::OpsError;

const OP: &str = "CUDA graph";

#[cfg(lawa_cuda_graphs)]
extern "C" {
    fn lawa_cuda_graph_begin(
        device: c_int,
        graph: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_cuda_graph_end(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
    fn lawa_cuda_graph_replay(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
    fn lawa_cuda_graph_free(graph: *mut c_void);
}

/// Whether this build can capture CUDA graphs: libtorch has CUDA and the CUDA headers were
/// found when lawa-ops was built. (A device is still needed to capture one.)
pub fn cuda_graphs_built() -> bool {
    cfg!(lawa_cuda_graphs)
}

/// A recorded piece of GPU work (see the module's documentation).
#[derive(Debug)]
pub struct CudaGraph {
    raw: *mut c_void,
}

impl CudaGraph {
    /// Records the CUDA work that `body` queues on `device` from this thread, without running
    /// it, and returns the graph with `body`'s result (the tensors it returns are the graph's
    /// outputs: each replay overwrites them). The device is synchronized first and the caching
    /// allocator's free blocks released, as `torch.cuda.graph` does; while `body` runs, the
    /// device's current stream is a side stream, and the one before is current again on return.
    /// An error of `body` ends the capture and is returned as it is; a capture that CUDA or
    /// libtorch refuses is an [`OpsError`] naming the reason, also when `body` panics (tch's
    /// panicking operations, when CUDA refuses work mid-capture): its message is the panic's
    /// (which the default panic hook has printed to stderr as well).
    ///
    /// A capture is process-wide (libtorch's global capture mode): no other thread may touch
    /// the device (an event query, a pinned-memory copy) until `body` returns.
    pub fn capture<T, E: From<OpsError>>(
        device: Device,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<(CudaGraph, T), E> {
        let Device::Cuda(index) = device else {
            return Err(OpsError {
                op: OP,
                message: format!("needs a CUDA device, not {device:?}"),
            }
            .into());
        };
        let capture = Capture::begin(index)?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let graph = capture.end();
        let out = out.map_err(|panic| OpsError {
            op: OP,
            message: format!(
                "the captured work panicked: {}",
                lawa_cxx::panic_message(&*panic)
            ),
        })??;
        Ok((graph?, out))
    }

    /// Queues the recorded work on the device's current stream (it returns before the work is
    /// done, as any kernel launch does).
    pub fn replay(&self) -> Result<(), OpsError> {
        replay(self.raw)
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        free(self.raw);
    }
}

/// A capture in progress: ended by [`end`](Self::end), or when dropped (an early return), so
/// that the device's stream is always put back.
struct Capture {
    raw: *mut c_void,
}

impl Capture {
    fn begin(index: usize) -> Result<Capture, OpsError> {
        begin(index).map(|raw| Capture { raw })
    }

    fn end(mut self) -> Result<CudaGraph, OpsError> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        match end(raw) {
            Ok(()) => Ok(CudaGraph { raw }),
            Err(e) => {
                free(raw);
                Err(e)
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            let _ = end(self.raw);
            free(self.raw);
        }
    }
}

#[cfg(lawa_cuda_graphs)]
fn begin(index: usize) -> Result<*mut c_void, OpsError> {
    let mut raw = std::ptr::null_mut();
    crate::call(OP, |error| {
        // SAFETY: `raw` is written on success; `index` is checked by the shim.
        unsafe { lawa_cuda_graph_begin(index as c_int, &mut raw, error) }
    })?;
    Ok(raw)
}

#[cfg(lawa_cuda_graphs)]
fn end(raw: *mut c_void) -> Result<(), OpsError> {
    crate::call(OP, |error| {
        // SAFETY: a graph from lawa_cuda_graph_begin, not yet freed.
        unsafe { lawa_cuda_graph_end(raw, error) }
    })
}

#[cfg(lawa_cuda_graphs)]
fn replay(raw: *mut c_void) -> Result<(), OpsError> {
    crate::call(OP, |error| {
        // SAFETY: a captured graph, owned by the caller's CudaGraph.
        unsafe { lawa_cuda_graph_replay(raw, error) }
    })
}

#[cfg(lawa_cuda_graphs)]
fn free(raw: *mut c_void) {
    if !raw.is_null() {
        // SAFETY: a graph from lawa_cuda_graph_begin, freed once (callers null or drop it).
        unsafe { lawa_cuda_graph_free(raw) }
    }
}

#[cfg(not(lawa_cuda_graphs))]
fn unbuilt() -> OpsError {
    OpsError {
        op: OP,
        message: "this build has no CUDA graphs (libtorch without CUDA, or the CUDA headers were \
                  not found when lawa-ops was built: see scripts/bootstrap.sh)"
            .into(),
    }
}

#[cfg(not(lawa_cuda_graphs))]
fn begin(_index: usize) -> Result<*mut c_void, OpsError> {
    Err(unbuilt())
}

#[cfg(not(lawa_cuda_graphs))]
fn end(_raw: *mut c_void) -> Result<(), OpsError> {
    Err(unbuilt())
}

#[cfg(not(lawa_cuda_graphs))]
fn replay(_raw: *mut c_void) -> Result<(), OpsError> {
    Err(unbuilt())
}

#[cfg(not(lawa_cuda_graphs))]
fn free(_raw: *mut c_void) {}
