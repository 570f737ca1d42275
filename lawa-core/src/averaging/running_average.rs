use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use super::state::SavedAverager;
use super::weights::{is_averaged, stored_copy, Layout};
use super::{AveragingError, Storage, Weights};

/// A running average `avg = lerp(avg, theta, w)` over fp32 copies of the weights, the update
/// both EMA (`w = 1 - decay`) and SWA (`w = 1 / (n + 1)`) use. The first update copies; integer
/// tensors are copied on every update, not averaged.
///
/// An average kept in host memory of weights on a GPU is updated without making training wait:
/// the weights are copied into pinned buffers on the GPU's stream (after the optimizer step
/// that made them, before the next one), and the host-side lerp runs on a thread of its own
/// while the GPU goes on with the next step. Everything that reads the average, and the next
/// update, first waits for that thread ([`settle`](Self::settle)), so results are the same,
/// bit for bit, as those of the synchronous update.
#[derive(Debug, Default)]
pub(crate) struct RunningAverage {
    layout: Option<Layout>,
    tensors: Vec<Tensor>,
    updates: u64,
    /// Pinned host buffers the weights are copied into when the average lives in host memory
    /// and the weights on a GPU: a copy into pinned memory runs at the bus's speed, where a
    /// copy into freshly allocated pageable memory was measured at 378-418 ms an EMA update of
    /// GPT-2 small on an H200 (7-8 steps). Views of one allocation (see [`host_buffers`]),
    /// made on the first such update, then reused.
    staging: Vec<Tensor>,
    /// The host-side part of the last update, when it runs on a thread of its own.
    background: Mutex<Background>,
    /// Update through the background thread even when the weights are in host memory (tests
    /// of the thread's arithmetic on a machine without a GPU).
    defer_host_weights: bool,
}

impl Drop for RunningAverage {
    /// Waits for an update still running in the background, so that its thread never outlives
    /// the average (nor runs on into libtorch's teardown at exit).
    fn drop(&mut self) {
        let _ = self.settle("");
    }
}

/// The host-side part of the last update.
#[derive(Debug, Default)]
enum Background {
    /// Nothing running, nothing failed.
    #[default]
    Idle,
    /// Running on its own thread.
    Running(JoinHandle<Result<(), AveragingError>>),
    /// Failed: the average is unusable from then on.
    Failed(String),
}

/// The averaged tensors of one update, split by where their lerp runs.
#[derive(Default)]
struct UpdatePlan {
    /// Averages and the weights (already on the averages' device and dtype) lerped at once.
    now: (Vec<Tensor>, Vec<Tensor>),
    /// Averages in host memory, the staging buffers their weights are copied into, and those
    /// weights: lerped on the background thread once the copies are done.
    later: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>),
}

impl RunningAverage {
    /// An average whose every update goes through the background thread, whatever the device
    /// of the weights (tests).
    #[cfg(test)]
    fn deferring() -> Self {
        let mut average = Self::default();
        average.defer_host_weights = true;
        average
    }

    pub(crate) fn updates(&self) -> u64 {
        self.updates
    }

    /// Waits for the last update's host-side part, if it runs on another thread; an error if
    /// it failed (then and on every later call: the average is unusable).
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

    pub(crate) fn update(
        &mut self,
        weights: &Weights,
        weight: f64,
        storage: Storage,
        label: &str,
    ) -> Result<(), AveragingError> {
        self.settle(label)?;
        match &self.layout {
            None => {
                self.layout = Some(weights.layout());
                self.tensors = weights
                    .iter()
                    .map(|(_, t)| stored_copy(t, storage))
                    .collect();
            }
            Some(layout) => {
                layout.check(&weights.layout(), label, true)?;
                let plan = self.plan(weights)?;
                // Every averaged tensor in one multi-tensor lerp (a few kernels on a GPU, the
                // single-tensor arithmetic on the CPU).
                lawa_ops::foreach_lerp_(&plan.now.0, &plan.now.1, weight)?;
                let (avgs, staged, sources) = plan.later;
                if !avgs.is_empty() {
                    // Integer tensors are copied already: a failure here leaves the average
                    // half updated, unusable.
                    let background = self
                        .background
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner);
                    match start_host_lerp(avgs, staged, &sources, weight) {
                        Ok(thread) => *background = Background::Running(thread),
                        Err(reason) => {
                            *background = Background::Failed(reason);
                            return self.settle(label);
                        }
                    }
                }
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// Splits the update of the averages by `weights` into what runs now and what runs on the
    /// background thread; integer tensors are copied on the spot.
    fn plan(&mut self, weights: &Weights) -> Result<UpdatePlan, AveragingError> {
        let mut plan = UpdatePlan::default();
        let (mut later, mut sources) = (Vec::new(), Vec::new());
        tch::no_grad(|| {
            for (avg, (_, theta)) in self.tensors.iter_mut().zip(weights.iter()) {
                let theta = theta.detach();
                if !is_averaged(theta.kind()) {
                    avg.f_copy_(&theta)?;
                } else if avg.device() == Device::Cpu
                    && (theta.device().is_cuda() || self.defer_host_weights)
                {
                    later.push(avg.shallow_clone());
                    sources.push(theta);
                } else {
                    plan.now.0.push(avg.shallow_clone());
                    plan.now
                        .1
                        .push(theta.to_device(avg.device()).to_kind(avg.kind()));
                }
            }
            Ok::<(), AveragingError>(())
        })?;
        if !sources.is_empty() {
            let fits = self.staging.len() == sources.len()
                && self
                    .staging
                    .iter()
                    .zip(&sources)
                    .all(|(b, t)| b.size() == t.size() && b.kind() == t.kind());
            if !fits {
                self.staging = host_buffers(&sources)?;
            }
            let staged = self.staging.iter().map(Tensor::shallow_clone).collect();
            plan.later = (later, staged, sources);
        }
        Ok(plan)
    }

    /// Writes the average into `target`; before the first update, a `NotReady` error naming
    /// `first_step`.
    pub(crate) fn write(
        &self,
        target: &Weights,
        label: &str,
        first_step: u64,
    ) -> Result<(), AveragingError> {
        let layout = self
            .layout
            .as_ref()
            .ok_or_else(|| AveragingError::NotReady {
                label: label.to_string(),
                first_step,
            })?;
        layout.check(&target.layout(), &format!("{label}: target"), false)?;
        self.settle(label)?;
        tch::no_grad(|| {
            for (avg, (_, t)) in self.tensors.iter().zip(target.iter()) {
                t.shallow_clone().f_copy_(avg)?;
            }
            Ok::<(), tch::TchError>(())
        })?;
        Ok(())
    }

    /// The saved state: `meta` plus the update count, and the running-average tensors.
    pub(crate) fn save(
        &self,
        label: String,
        mut meta: serde_json::Value,
    ) -> Result<SavedAverager, AveragingError> {
        self.settle(&label)?;
        meta["updates"] = self.updates.into();
        Ok(SavedAverager {
            label,
            meta,
            tensors: self.tensors.iter().map(|t| t.shallow_clone()).collect(),
            snapshot_steps: Vec::new(),
        })
    }

    /// Continues from a state saved by [`save`](Self::save) (tensors already on `storage`).
    pub(crate) fn restore(
        &mut self,
        saved: SavedAverager,
        label: &str,
        layout: &Layout,
    ) -> Result<(), AveragingError> {
        saved.check_label(label)?;
        // The state is replaced whatever the last update did.
        let _ = self.settle(label);
        let updates = saved.counter("updates")?;
        let expected = if updates == 0 { 0 } else { layout.len() };
        if saved.tensors.len() != expected {
            return Err(saved.bad(format!(
                "{} tensors saved, {expected} expected after {updates} updates",
                saved.tensors.len()
            )));
        }
        self.layout = (updates > 0).then(|| layout.clone());
        *self
            .background
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = Background::Idle;
        self.tensors = saved.tensors;
        self.updates = updates;
        Ok(())
    }
}

/// The [`Core`](super::averager::sealed::Core) of an averager built on a [`RunningAverage`]
/// (EMA, SWA): no snapshots; state saved as the running average plus the type's own
/// `saved_meta()`, checked on restore by its `check_saved()`.
macro_rules! running_average_core {
    ($averager:ty) => {
        impl super::averager::sealed::Core for $averager {
            fn storage(&self) -> Storage {
                self.storage
            }

            fn observe_in(
                &mut self,
                step: u64,
                weights: &Weights,
                _store: &mut super::store::SnapshotStore,
            ) -> Result<(), AveragingError> {
                self.observe(step, weights)
            }

            fn write_from(
                &self,
                target: &Weights,
                _store: &super::store::SnapshotStore,
            ) -> Result<(), AveragingError> {
                self.write_average(target)
            }

            fn settle(&self) -> Result<(), AveragingError> {
                self.average.settle(&self.label())
            }

            fn save(&self) -> Result<super::state::SavedAverager, AveragingError> {
                self.average.save(self.label(), self.saved_meta())
            }

            fn restore(
                &mut self,
                saved: super::state::SavedAverager,
                layout: &super::weights::Layout,
                _store: &super::store::SnapshotStore,
            ) -> Result<(), AveragingError> {
                self.check_saved(&saved)?;
                let label = self.label();
                self.average.restore(saved, &label, layout)
            }
        }
    };
}
pub(crate) use running_average_core;

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

/// How often the host-side thread looks whether the copies are done: polled rather than waited
/// on, so that the thread sleeps instead of spinning a core in `cudaEventSynchronize`.
const COPY_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// Queues the copies of `sources` into `staged` and starts the thread that lerps `avgs` towards
/// them once they are done.
fn start_host_lerp(
    avgs: Vec<Tensor>,
    staged: Vec<Tensor>,
    sources: &[Tensor],
    weight: f64,
) -> Result<JoinHandle<Result<(), AveragingError>>, String> {
    let copies = lawa_ops::copy_async(&staged, sources).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("lawa-host-average".into())
        .spawn(move || {
            while !copies.is_done()? {
                std::thread::sleep(COPY_POLL);
            }
            host_lerp(&avgs, &staged, weight)
        })
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// `avgs[i] = lerp(avgs[i], staged[i], weight)` in host memory, the weights cast to the
/// averages' dtype first (the host-side part of an update).
fn host_lerp(avgs: &[Tensor], staged: &[Tensor], weight: f64) -> Result<(), AveragingError> {
    tch::no_grad(|| {
        let thetas: Vec<Tensor> = avgs
            .iter()
            .zip(staged)
            .map(|(avg, t)| t.to_kind(avg.kind()))
            .collect();
        lawa_ops::foreach_lerp_(avgs, &thetas, weight)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    /// Weights of step `step`: two float tensors and an integer one.
    fn weights_at(step: i64) -> Weights {
        tch::manual_seed(step);
        Weights::from_named([
            (
                "a".to_string(),
                Tensor::randn([5, 3], (Kind::Float, Device::Cpu)),
            ),
            (
                "b".to_string(),
                Tensor::randn([7], (Kind::Float, Device::Cpu)),
            ),
            (
                "n".to_string(),
                Tensor::randint(9, [2], (Kind::Int64, Device::Cpu)),
            ),
        ])
    }

    /// The average as written into fresh zero tensors.
    fn written(avg: &RunningAverage) -> Result<Vec<Tensor>, AveragingError> {
        let target = weights_at(0);
        for (_, t) in target.iter() {
            let _ = t.shallow_clone().zero_();
        }
        avg.write(&target, "test", 1)?;
        Ok(target.iter().map(|(_, t)| t.copy()).collect())
    }

    fn running(avg: &RunningAverage) -> bool {
        matches!(*avg.background.lock().unwrap(), Background::Running(_))
    }

    /// Updates whose lerp runs on the background thread give the synchronous update's average
    /// bit for bit, after every update, through `write` and `save` alike.
    #[test]
    fn background_updates_equal_synchronous_updates_bit_for_bit() {
        let (mut now, mut later) = (RunningAverage::default(), RunningAverage::deferring());
        for step in 1..=6 {
            let w = weights_at(step);
            let weight = 1.0 / step as f64;
            now.update(&w, weight, Storage::Cpu, "now").unwrap();
            later.update(&w, weight, Storage::Cpu, "later").unwrap();
            assert!(!running(&now));
            assert_eq!(running(&later), step > 1, "the first update copies at once");
            let (a, b) = (written(&now).unwrap(), written(&later).unwrap());
            assert!(!running(&later), "write waits for the update");
            for (x, y) in a.iter().zip(&b) {
                assert!(x.equal(y), "step {step}: {x} vs {y}");
            }
        }
        let w = weights_at(7);
        later.update(&w, 0.5, Storage::Cpu, "later").unwrap();
        now.update(&w, 0.5, Storage::Cpu, "now").unwrap();
        let saved = later.save("later".into(), serde_json::json!({})).unwrap();
        assert!(!running(&later), "save waits for the update");
        for (x, y) in saved.tensors.iter().zip(&now.tensors) {
            assert!(x.equal(y));
        }
        assert_eq!(saved.meta["updates"], 7);
    }

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

    /// An update that fails on its thread is reported by the next read or update, and every one
    /// after it: the average is unusable.
    #[test]
    fn a_failed_background_update_is_reported_and_sticks() {
        let mut avg = RunningAverage::deferring();
        avg.update(&weights_at(1), 1.0, Storage::Cpu, "ema")
            .unwrap();
        *avg.background.get_mut().unwrap() = Background::Running(std::thread::spawn(|| {
            Err(AveragingError::UpdateFailed {
                label: "ema".into(),
                reason: "out of memory".into(),
            })
        }));
        for _ in 0..2 {
            let err = written(&avg).unwrap_err().to_string();
            assert!(err.contains("out of memory"), "{err}");
        }
        let err = avg
            .update(&weights_at(2), 0.5, Storage::Cpu, "ema")
            .unwrap_err();
        assert!(matches!(err, AveragingError::UpdateFailed { .. }), "{err}");
        assert_eq!(avg.updates(), 1, "the refused update is not counted");
    }
}
