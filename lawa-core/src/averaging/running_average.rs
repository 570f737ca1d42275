use tch::Tensor;

use super::snapshot::stored_copy;
use super::weights::{is_averaged, Layout};
use super::{AveragingError, Storage, Weights};

/// Whether a running average that starts at step `start` and updates every `every` steps
/// takes an update at `step` (the rule EMA and SWA share).
pub(crate) fn is_due(step: u64, start: u64, every: u64) -> bool {
    step >= start && (step - start).is_multiple_of(every)
}

/// A running average `avg = lerp(avg, theta, w)` over fp32 copies of the weights, the update
/// both EMA (`w = 1 - decay`) and SWA (`w = 1 / (n + 1)`) use. The first update copies; integer
/// tensors are copied on every update, not averaged.
#[derive(Debug, Default)]
pub(crate) struct RunningAverage {
    layout: Option<Layout>,
    tensors: Vec<Tensor>,
    updates: u64,
}

impl RunningAverage {
    pub(crate) fn updates(&self) -> u64 {
        self.updates
    }

    /// Handles to the running-average tensors, for a saved state.
    pub(crate) fn state_tensors(&self) -> Vec<Tensor> {
        self.tensors.iter().map(|t| t.shallow_clone()).collect()
    }

    pub(crate) fn update(
        &mut self,
        weights: &Weights,
        weight: f64,
        storage: Storage,
        label: &str,
    ) -> Result<(), AveragingError> {
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
                tch::no_grad(|| {
                    for (avg, (_, theta)) in self.tensors.iter_mut().zip(weights.iter()) {
                        let theta = theta.detach();
                        if !is_averaged(theta.kind()) {
                            avg.copy_(&theta);
                        } else if theta.device() == avg.device() && theta.kind() == avg.kind() {
                            let _ = avg.lerp_(&theta, weight);
                        } else {
                            let theta = theta.to_device(avg.device()).to_kind(avg.kind());
                            let _ = avg.lerp_(&theta, weight);
                        }
                    }
                });
            }
        }
        self.updates += 1;
        Ok(())
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
        tch::no_grad(|| {
            for (avg, (_, t)) in self.tensors.iter().zip(target.iter()) {
                t.shallow_clone().f_copy_(avg)?;
            }
            Ok::<(), tch::TchError>(())
        })?;
        Ok(())
    }

    pub(crate) fn restore(&mut self, layout: Layout, tensors: Vec<Tensor>, updates: u64) {
        self.layout = if updates == 0 { None } else { Some(layout) };
        self.tensors = if updates == 0 { Vec::new() } else { tensors };
        self.updates = updates;
    }
}
