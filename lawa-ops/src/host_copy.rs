//! Copies from a GPU into host memory that leave the host free, with an event to wait on:
//! what an average kept in host memory needs to overlap its host-side arithmetic with the
//! device's next training step.

use std::os::raw::{c_char, c_int, c_void};

use tch::Tensor;

use crate::{call, handles, same_lengths, Handle, OpsError};

extern "C" {
    fn lawa_copy_async(
        dsts: *const Handle,
        srcs: *const Handle,
        count: c_int,
        event: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_event_synchronize(event: *mut c_void, error: *mut *mut c_char) -> c_int;
    fn lawa_event_query(event: *mut c_void, done: *mut c_int, error: *mut *mut c_char) -> c_int;
    fn lawa_event_free(event: *mut c_void);
}

/// Copies queued by [`copy_async`]: [`wait`](Self::wait) returns once they have completed.
/// It can be waited on from any thread.
#[derive(Debug)]
pub struct PendingCopies {
    /// A `c10::Event` recorded after the copies, or null when they completed on the call.
    event: *mut c_void,
}

// SAFETY: the event is owned by this value alone, and CUDA events may be synchronized, queried
// and destroyed from any thread.
unsafe impl Send for PendingCopies {}

impl PendingCopies {
    /// Blocks until the copies have completed.
    pub fn wait(self) -> Result<(), OpsError> {
        if self.event.is_null() {
            return Ok(());
        }
        let event = self.event;
        call("event synchronize", |error| {
            // SAFETY: a live event owned by `self`, which is dropped (and frees it) after.
            unsafe { lawa_event_synchronize(event, error) }
        })
    }

    /// Whether the copies have completed, without blocking.
    pub fn is_done(&self) -> Result<bool, OpsError> {
        if self.event.is_null() {
            return Ok(true);
        }
        let mut done: c_int = 0;
        call("event query", |error| {
            // SAFETY: a live event owned by `self`.
            unsafe { lawa_event_query(self.event, &mut done, error) }
        })?;
        Ok(done != 0)
    }
}

impl Drop for PendingCopies {
    fn drop(&mut self) {
        if !self.event.is_null() {
            // SAFETY: made by `lawa_copy_async` with `new`, freed once, here.
            unsafe { lawa_event_free(self.event) }
        }
    }
}

/// `dsts[i].copy_(srcs[i], non_blocking = true)` for every `i`, then an event on the GPU's
/// current stream after the copies.
///
/// From a GPU into pinned host memory ([`pin_memory`](crate::pin_memory)) the copies are queued
/// on the device's current stream and the call returns at once: the destinations must not be
/// read before [`PendingCopies::wait`] returns. Work queued later on that stream (the next
/// optimizer step, say) runs after the copies, so they hold the values the stream had computed
/// when they were queued. (Copies the other way, from pinned memory to a GPU, are queued the
/// same way, and the sources must not change before `wait`.) Into pageable memory the copies
/// complete on the call, as do copies between host tensors (then `wait` returns at once).
/// Tensors on more than one GPU are an error.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let src = vec![Tensor::arange(4, (Kind::Float, Device::Cpu))];
/// let dst = vec![Tensor::zeros([4], (Kind::Float, Device::Cpu))];
/// lawa_ops::copy_async(&dst, &src)?.wait()?;
/// assert_eq!(Vec::<f32>::try_from(&dst[0])?, [0.0, 1.0, 2.0, 3.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn copy_async(dsts: &[Tensor], srcs: &[Tensor]) -> Result<PendingCopies, OpsError> {
    let op = "copy_async";
    same_lengths(op, &[dsts.len(), srcs.len()])?;
    let (d, s) = (handles(dsts), handles(srcs));
    let mut event: *mut c_void = std::ptr::null_mut();
    call(op, |error| {
        // SAFETY: every handle is a live tensor borrowed for the call; lengths checked above;
        // `event` receives a new event or null.
        unsafe { lawa_copy_async(d.as_ptr(), s.as_ptr(), d.len() as c_int, &mut event, error) }
    })?;
    Ok(PendingCopies { event })
}
