use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use super::AveragingError;

/// Copies of a GPU's weights into host memory that do not make training wait, and the host-side
/// work on them: what an average or a snapshot kept in host memory (`storage: cpu`) needs.
///
/// [`start`](Self::start) copies the weights into pinned buffers on the GPU's current stream
/// (after the optimizer step that made them, before the next one, which is queued behind the
/// copies) and hands them, once the copies are done, to a closure running on a thread of its
/// own while the GPU goes on with the next step. [`settle`](Self::settle) waits for that thread:
/// whatever reads the result calls it first. A failure is sticky: the copy it was filling is
/// unusable, so every later `settle` and `start` reports it.
#[derive(Debug, Default)]
pub(crate) struct HostOffload {
    /// Pinned host buffers the weights are copied into: a copy into pinned memory runs at the
    /// bus's speed, where a copy into freshly allocated pageable memory was measured at 378-418
    /// ms an EMA update of GPT-2 small on an H200 (7-8 steps). Views of one allocation (see
    /// [`host_buffers`]), made on the first copy, then reused.
    staging: Vec<Tensor>,
    /// The host-side part of the last copy.
    background: Mutex<Background>,
    /// Take weights already in host memory through the background thread too (tests of the
    /// thread's work on a machine without a GPU).
    defer_host_weights: bool,
}

impl Drop for HostOffload {
    /// Waits for the thread still running, so that it never outlives its buffers' owner (nor
    /// runs on into libtorch's teardown at exit).
    fn drop(&mut self) {
        let _ = self.settle("");
    }
}

/// The host-side part of the last copy.
#[derive(Debug, Default)]
enum Background {
    /// Nothing running, nothing failed.
    #[default]
    Idle,
    /// Running on its own thread.
    Running(JoinHandle<Result<(), AveragingError>>),
    /// Failed: what it was filling is unusable from then on.
    Failed(String),
}

/// The work a [`HostOffload`] runs on the staged copies once they are done.
pub(crate) type Finish = Box<dyn FnOnce(&[Tensor]) -> Result<(), AveragingError> + Send>;

impl HostOffload {
    /// An offload that takes every weight through the background thread, whatever its device
    /// (tests).
    #[cfg(test)]
    pub(crate) fn deferring() -> Self {
        let mut offload = Self::default();
        offload.defer_host_weights = true;
        offload
    }

    /// Whether a copy of `t` into host memory goes through [`start`](Self::start): when `t` is
    /// on a GPU (or always, for an offload made by `deferring`).
    pub(crate) fn defers(&self, t: &Tensor) -> bool {
        t.device().is_cuda() || self.defer_host_weights
    }

    /// Waits for the last copy's host-side work, if any; an error if it failed (then and on
    /// every later call).
    pub(crate) fn settle(&self, label: &str) -> Result<(), AveragingError> {
        let mut background = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Background::Running(_) = &*background {
            let Background::Running(thread) = std::mem::take(&mut *background) else {
                unreachable!("matched just above");
            };
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(AveragingError::UpdateFailed { reason, .. })) => {
                    *background = Background::Failed(reason)
                }
                Ok(Err(e)) => *background = Background::Failed(e.to_string()),
                Err(_) => *background = Background::Failed("the update's thread panicked".into()),
            }
        }
        match &*background {
            Background::Failed(reason) => Err(AveragingError::UpdateFailed {
                label: label.to_string(),
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Copies `sources` into the staging buffers on the GPU's stream (after the last copy's
    /// work has finished) and starts the thread that runs `finish` on them once they are done.
    /// A failure to start is sticky, like one on the thread: the caller has begun to change
    /// what `finish` would have completed.
    pub(crate) fn start(
        &mut self,
        label: &str,
        sources: &[Tensor],
        finish: Finish,
    ) -> Result<(), AveragingError> {
        self.settle(label)?;
        match self.spawn(sources, finish) {
            Ok(thread) => {
                *self.state() = Background::Running(thread);
                Ok(())
            }
            Err(reason) => {
                *self.state() = Background::Failed(reason);
                self.settle(label)
            }
        }
    }

    /// Forgets the last copy, failed or not, once its thread has ended (a restored state
    /// replaces whatever it was filling).
    pub(crate) fn reset(&mut self) {
        let _ = self.settle("");
        *self.state() = Background::Idle;
    }

    fn state(&mut self) -> &mut Background {
        self.background
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(
        &mut self,
        sources: &[Tensor],
        finish: Finish,
    ) -> Result<JoinHandle<Result<(), AveragingError>>, String> {
        let fits = self.staging.len() == sources.len()
            && self
                .staging
                .iter()
                .zip(sources)
                .all(|(b, t)| b.size() == t.size() && b.kind() == t.kind());
        if !fits {
            self.staging = host_buffers(sources).map_err(|e| e.to_string())?;
        }
        let staged: Vec<Tensor> = self.staging.iter().map(Tensor::shallow_clone).collect();
        let copies = lawa_ops::copy_async(&staged, sources).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("lawa-host-copy".into())
            .spawn(move || {
                while !copies.is_done()? {
                    std::thread::sleep(COPY_POLL);
                }
                finish(&staged)
            })
            .map_err(|e| format!("cannot start a thread: {e}"))
    }

    /// Number of staging buffers held (tests).
    #[cfg(test)]
    pub(crate) fn staging_len(&self) -> usize {
        self.staging.len()
    }

    /// Whether host-side work is running (tests).
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        matches!(*self.background.lock().unwrap(), Background::Running(_))
    }

    /// Runs `work` as if it were the host-side part of a copy, once the last one has ended
    /// (tests of failures).
    #[cfg(test)]
    pub(crate) fn run_as_background(
        &mut self,
        work: impl FnOnce() -> Result<(), AveragingError> + Send + 'static,
    ) {
        let _ = self.settle("");
        *self.state() = Background::Running(std::thread::spawn(work));
    }
}

/// How often the host-side thread looks whether the copies are done: polled rather than waited
/// on, so that the thread sleeps instead of spinning a core in `cudaEventSynchronize`.
const COPY_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// Alignment of each view in [`host_buffers`]' allocation, in bytes.
const VIEW_ALIGNMENT: i64 = 64;

/// Host tensors shaped like `sources`, as views of one allocation, pinned when a source is on a
/// GPU. libtorch's pinned-memory allocator rounds each allocation up to a power of two: one
/// allocation for all the weights wastes that rounding once (GPT-2 small: 475 MiB of weights
/// in 512 MiB), where a pinned tensor per weight wasted it per tensor (827 MB for 498 MB, 1.66
/// times the weights).
fn host_buffers(sources: &[Tensor]) -> Result<Vec<Tensor>, AveragingError> {
    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as i64;
    let mut offsets = Vec::with_capacity(sources.len());
    let mut total = 0;
    for t in sources {
        offsets.push(total);
        total += (bytes(t) + VIEW_ALIGNMENT - 1) / VIEW_ALIGNMENT * VIEW_ALIGNMENT;
    }
    let flat = if sources.iter().any(|t| t.device().is_cuda()) {
        lawa_ops::empty_pinned(total)?
    } else {
        Tensor::empty([total], (Kind::Uint8, Device::Cpu))
    };
    sources
        .iter()
        .zip(offsets)
        .map(|(t, offset)| {
            let view = flat
                .f_narrow(0, offset, bytes(t))?
                .f_view_dtype(t.kind())?
                .f_view(t.size().as_slice())?;
            Ok(view)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staging buffers are disjoint, aligned views of one allocation, of each source's shape
    /// and dtype.
    #[test]
    fn host_buffers_are_disjoint_aligned_views_of_one_allocation() {
        let sources = vec![
            Tensor::ones([3, 5], (Kind::Float, Device::Cpu)),
            Tensor::ones([7], (Kind::BFloat16, Device::Cpu)),
            Tensor::ones([0], (Kind::Float, Device::Cpu)),
            Tensor::ones([2, 2], (Kind::Double, Device::Cpu)),
        ];
        let buffers = host_buffers(&sources).unwrap();
        let base = buffers[0].data_ptr() as i64;
        let mut end = base;
        for (b, s) in buffers.iter().zip(&sources) {
            assert_eq!((b.size(), b.kind()), (s.size(), s.kind()));
            if b.numel() == 0 {
                continue; // no data pointer
            }
            let at = b.data_ptr() as i64;
            assert_eq!((at - base) % VIEW_ALIGNMENT, 0);
            assert!(at >= end, "views overlap");
            end = at + (b.numel() * b.kind().elt_size_in_bytes()) as i64;
        }
        for (i, b) in buffers.iter().enumerate() {
            let _ = b.shallow_clone().fill_(i as f64 + 1.0);
        }
        for (i, b) in buffers.iter().enumerate() {
            let want = Tensor::full(b.size(), i as f64 + 1.0, (b.kind(), Device::Cpu));
            assert!(b.equal(&want), "buffer {i} was overwritten: {b}");
        }
    }

    /// The closure sees the sources' values as they were when `start` was called, in buffers
    /// reused from one start to the next; `settle` waits for it.
    #[test]
    fn start_hands_the_copied_values_to_the_closure_and_settle_waits_for_it() {
        let mut offload = HostOffload::default();
        let out = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let mut first_staging = 0;
        for round in 1..=3 {
            let src = Tensor::full([4], round as f64, (Kind::Float, Device::Cpu));
            let target = out.shallow_clone();
            offload
                .start(
                    "test",
                    std::slice::from_ref(&src),
                    Box::new(move |staged| {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        tch::no_grad(|| target.shallow_clone().f_copy_(&staged[0]))?;
                        Ok(())
                    }),
                )
                .unwrap();
            let _ = src.shallow_clone().fill_(f64::NAN); // the next step, after the copy
            assert!(offload.is_running());
            offload.settle("test").unwrap();
            assert!(!offload.is_running());
            assert_eq!(Vec::<f32>::try_from(&out).unwrap(), [round as f32; 4]);
            let at = offload.staging[0].data_ptr() as usize;
            if round == 1 {
                first_staging = at;
            }
            assert_eq!(at, first_staging, "the staging buffers are reused");
        }
    }

    /// A failure on the thread is reported by the next `settle` and `start`, and every one after
    /// them, until a `reset`.
    #[test]
    fn a_failure_sticks_until_reset() {
        let mut offload = HostOffload::default();
        offload.run_as_background(|| {
            Err(AveragingError::UpdateFailed {
                label: "lawa".into(),
                reason: "out of memory".into(),
            })
        });
        for _ in 0..2 {
            let err = offload.settle("lawa").unwrap_err().to_string();
            assert!(err.contains("out of memory"), "{err}");
        }
        let src = [Tensor::zeros([2], (Kind::Float, Device::Cpu))];
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let err = offload
            .start(
                "lawa",
                &src,
                Box::new(move |_| {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                }),
            )
            .unwrap_err();
        assert!(matches!(err, AveragingError::UpdateFailed { .. }), "{err}");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        offload.reset();
        offload.settle("lawa").unwrap();
    }
}
