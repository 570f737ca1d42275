use tch::{Device, Tensor};

use super::host_offload::HostOffload;
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
    /// The copies into host memory and the host-side lerp, when the average lives in host
    /// memory and the weights on a GPU.
    offload: HostOffload,
}

/// The averaged tensors of one update, split by where their lerp runs.
#[derive(Default)]
struct UpdatePlan {
    /// Averages and the weights (already on the averages' device and dtype) lerped at once.
    now: (Vec<Tensor>, Vec<Tensor>),
    /// Averages in host memory and the weights they are lerped towards on the background
    /// thread, once copied into host memory.
    later: (Vec<Tensor>, Vec<Tensor>),
}

impl RunningAverage {
    /// An average whose every update goes through the background thread, whatever the device
    /// of the weights (tests).
    #[cfg(test)]
    fn deferring() -> Self {
        RunningAverage {
            offload: HostOffload::deferring(),
            ..Self::default()
        }
    }

    pub(crate) fn updates(&self) -> u64 {
        self.updates
    }

    /// Waits for the last update's host-side part, if it runs on another thread; an error if
    /// it failed (then and on every later call: the average is unusable).
    pub(crate) fn settle(&self, label: &str) -> Result<(), AveragingError> {
        self.offload.settle(label)
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
                let (avgs, sources) = plan.later;
                if !avgs.is_empty() {
                    // Integer tensors are copied already: a failure from here on leaves the
                    // average half updated, unusable.
                    self.offload.start(
                        label,
                        &sources,
                        Box::new(move |staged| host_lerp(&avgs, staged, weight)),
                    )?;
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
                } else if avg.device() == Device::Cpu && self.offload.defers(&theta) {
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
        plan.later = (later, sources);
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

    /// The names, shapes and dtypes of the weights averaged, once updated.
    pub(crate) fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
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
        let updates = saved.counter("updates")?;
        let expected = if updates == 0 { 0 } else { layout.len() };
        if saved.tensors.len() != expected {
            return Err(saved.bad(format!(
                "{} tensors saved, {expected} expected after {updates} updates",
                saved.tensors.len()
            )));
        }
        self.layout = (updates > 0).then(|| layout.clone());
        // The state is replaced whatever the last update did.
        self.offload.reset();
        self.tensors = saved.tensors;
        self.updates = updates;
        Ok(())
    }
}

/// [`Averager`](super::Averager) and its [`Core`](super::averager::sealed::Core) for an averager
/// built on a [`RunningAverage`] (EMA, SWA), which differ only in their label (`name()`) and the
/// weight of each update (`next_weight()`): no snapshots; state saved as the running average
/// plus the type's own `saved_meta()`, checked on restore by its `check_saved()`.
macro_rules! running_average_core {
    ($averager:ty) => {
        impl super::Averager for $averager {
            fn label(&self) -> String {
                self.name()
            }

            fn observe(&mut self, step: u64, weights: &Weights) -> Result<(), AveragingError> {
                if self.cadence.admit(step, weights, &|| self.label())? {
                    let weight = self.next_weight();
                    let label = self.label();
                    self.average.update(weights, weight, self.storage, &label)?;
                }
                self.cadence.record(step);
                Ok(())
            }

            fn is_ready(&self) -> bool {
                self.average.updates() > 0
            }

            fn write_average(&self, target: &Weights) -> Result<(), AveragingError> {
                self.average
                    .write(target, &self.label(), self.cadence.first_step())
            }
        }

        impl super::averager::sealed::Core for $averager {
            fn storage(&self) -> Storage {
                self.storage
            }

            fn layout(&self) -> Option<&super::weights::Layout> {
                self.average.layout()
            }

            fn last_step(&self) -> Option<u64> {
                self.cadence.last()
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
                let mut meta = self.saved_meta();
                self.cadence.save_into(&mut meta);
                self.average.save(self.label(), meta)
            }

            fn restore(
                &mut self,
                saved: super::state::SavedAverager,
                layout: &super::weights::Layout,
                _store: &super::store::SnapshotStore,
            ) -> Result<(), AveragingError> {
                self.check_saved(&saved)?;
                let mut cadence = self.cadence;
                cadence.restore_from(&saved, None);
                let label = self.label();
                self.average.restore(saved, &label, layout)?;
                self.cadence = cadence;
                Ok(())
            }
        }
    };
}
pub(crate) use running_average_core;

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
    use crate::averaging::weights::test_weights_at;

    /// Weights of step `step`: two float tensors and an integer one.
    fn weights_at(step: i64) -> Weights {
        test_weights_at(step, Kind::Float)
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
        avg.offload.is_running()
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

    /// An update that fails on its thread is reported by the next read or update, and every one
    /// after it: the average is unusable.
    #[test]
    fn a_failed_background_update_is_reported_and_sticks() {
        let mut avg = RunningAverage::deferring();
        avg.update(&weights_at(1), 1.0, Storage::Cpu, "ema")
            .unwrap();
        avg.offload.run_as_background(|| {
            Err(AveragingError::UpdateFailed {
                label: "ema".into(),
                reason: "out of memory".into(),
            })
        });
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
