use serde::{Deserialize, Serialize};

use super::ema::restore_running;
use super::running_average::{is_due, RunningAverage};
use super::weights::Layout;
use super::{Averager, AveragerState, AveragingError, SnapshotCache, Weights};

/// When SWA starts: an optimizer step, or a fraction of the training run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SwaStart {
    /// At this step.
    Step(u64),
    /// At this fraction of the total steps (0.75 is the paper's "SWA late").
    Fraction(f64),
}

impl std::fmt::Display for SwaStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwaStart::Step(s) => write!(f, "{s}"),
            SwaStart::Fraction(x) => write!(f, "{x}"),
        }
    }
}

/// Stochastic weight averaging: from `start` on, every `every` steps,
/// `swa = lerp(swa, theta, 1 / (n + 1))`, the equal-weight mean of all samples taken (PyTorch's
/// `AveragedModel` default; the authors' `train_swa.py` with `swa_step = 10`).
#[derive(Debug)]
pub struct Swa {
    start: SwaStart,
    start_step: u64,
    every: u64,
    average: RunningAverage,
}

impl Swa {
    /// SWA from `start` every `every` steps, in a run of `total_steps` (needed for a fractional
    /// start, and to refuse a start after the end).
    pub fn new(
        start: SwaStart,
        every: u64,
        total_steps: Option<u64>,
    ) -> Result<Self, AveragingError> {
        let label = format!("swa_start{start}_every{every}");
        if every == 0 {
            return Err(AveragingError::invalid(
                label,
                "every",
                0,
                "must be at least 1",
            ));
        }
        let start_step = match start {
            SwaStart::Step(s) => s,
            SwaStart::Fraction(x) => {
                if !(0.0..1.0).contains(&x) {
                    return Err(AveragingError::invalid(
                        label,
                        "start",
                        x,
                        "a fraction of training must be in [0, 1)",
                    ));
                }
                let total = total_steps.ok_or_else(|| {
                    AveragingError::invalid(
                        label.clone(),
                        "start",
                        x,
                        "a fractional start needs the run's total steps",
                    )
                })?;
                (x * total as f64).round() as u64
            }
        };
        if let Some(total) = total_steps {
            if start_step > total {
                return Err(AveragingError::invalid(
                    label,
                    "start",
                    start_step,
                    format!("after the end of training (step {total})"),
                ));
            }
        }
        Ok(Swa {
            start,
            start_step,
            every,
            average: RunningAverage::default(),
        })
    }

    /// The first step sampled.
    pub fn start_step(&self) -> u64 {
        self.start_step
    }

    /// Number of samples averaged.
    pub fn samples(&self) -> u64 {
        self.average.updates()
    }

    fn due(&self, step: u64) -> bool {
        is_due(step, self.start_step, self.every)
    }
}

impl Averager for Swa {
    fn label(&self) -> String {
        format!("swa_start{}_every{}", self.start, self.every)
    }

    fn observe(
        &mut self,
        step: u64,
        weights: &Weights,
        snapshots: &mut SnapshotCache,
    ) -> Result<(), AveragingError> {
        if !self.due(step) {
            return Ok(());
        }
        let weight = 1.0 / (self.average.updates() as f64 + 1.0);
        let label = self.label();
        self.average
            .update(weights, weight, snapshots.storage(), &label)
    }

    fn is_ready(&self) -> bool {
        self.average.updates() > 0
    }

    fn write_average(&self, target: &Weights) -> Result<(), AveragingError> {
        self.average
            .write(target, &self.label(), self.start_step.max(1))
    }

    fn state(&self) -> AveragerState {
        AveragerState {
            label: self.label(),
            meta: serde_json::json!({ "updates": self.average.updates(), "start_step": self.start_step }),
            tensors: self.average.state_tensors(),
            snapshots: Vec::new(),
        }
    }

    fn restore(&mut self, state: AveragerState, layout: &Layout) -> Result<(), AveragingError> {
        let saved_start = state.field_u64("start_step")?;
        if saved_start != self.start_step {
            return Err(AveragingError::BadState {
                label: self.label(),
                reason: format!("saved start step {saved_start}, now {}", self.start_step),
            });
        }
        let label = self.label();
        restore_running(&mut self.average, &label, state, layout)
    }
}
