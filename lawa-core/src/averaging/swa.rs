use super::cadence::Cadence;
use super::ema::checked_every;
use super::running_average::{running_average_core, RunningAverage};
use super::state::SavedAverager;
use super::{Averager, AveragingError, Storage, Weights};

/// Stochastic weight averaging: at step `start` and every `every` steps after,
/// `swa = lerp(swa, theta, 1 / (n + 1))`, the equal-weight mean of all samples taken (PyTorch's
/// `AveragedModel` default; the authors' `train_swa.py` samples every 10 steps).
///
/// ```
/// use lawa_core::averaging::Swa;
/// let early = Swa::new().every(10)?.start(5_000);
/// let late = Swa::new().every(10)?.start_fraction(0.75, 70_000)?; // the paper's "SWA late"
/// assert_eq!(late.start_step(), 52_500);
/// # Ok::<(), lawa_core::averaging::AveragingError>(())
/// ```
#[derive(Debug)]
pub struct Swa {
    cadence: Cadence,
    /// The start as written in the label: a step, or a fraction of training.
    start_text: String,
    storage: Storage,
    average: RunningAverage,
}

impl Default for Swa {
    fn default() -> Self {
        Swa::new()
    }
}

impl Swa {
    /// SWA from the first step, sampling every step.
    pub fn new() -> Self {
        Swa {
            cadence: Cadence::new(0, 1),
            start_text: "0".into(),
            storage: Storage::default(),
            average: RunningAverage::default(),
        }
    }

    /// Samples every `every` steps (at least 1).
    pub fn every(mut self, every: u64) -> Result<Self, AveragingError> {
        self.cadence.every = checked_every("swa", every)?;
        Ok(self)
    }

    /// The optimizer step of its first sample: `start`, or `every` when `start` is 0. An averager
    /// whose first update comes after a run's last step is never ready.
    pub fn first_update(&self) -> u64 {
        self.cadence.first_step()
    }

    /// Takes the first sample at step `start`.
    pub fn start(mut self, start: u64) -> Self {
        self.cadence.start = start;
        self.start_text = start.to_string();
        self
    }

    /// Takes the first sample at `fraction` (in [0, 1)) of a run of `total_steps`, rounded to
    /// the nearest step (0.75 is the paper's "SWA late").
    pub fn start_fraction(
        mut self,
        fraction: f64,
        total_steps: u64,
    ) -> Result<Self, AveragingError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(AveragingError::invalid(
                "swa",
                "start",
                fraction,
                "a fraction of training must be in [0, 1)",
            ));
        }
        self.cadence.start = (fraction * total_steps as f64).round() as u64;
        self.start_text = fraction.to_string();
        Ok(self)
    }

    /// Keeps the average in `storage` (default: on the training device).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// The first step sampled.
    pub fn start_step(&self) -> u64 {
        self.cadence.start
    }

    /// Number of samples averaged.
    pub fn samples(&self) -> u64 {
        self.average.updates()
    }
}

impl Swa {
    /// The label (see [`Averager::label`]).
    fn name(&self) -> String {
        format!("swa_start{}_every{}", self.start_text, self.cadence.every)
    }

    /// The weight of the next sample: 1 / (samples + 1), so that all weigh the same.
    fn next_weight(&self) -> f64 {
        1.0 / (self.average.updates() as f64 + 1.0)
    }

    /// What a saved state records besides the running average: the resolved start step.
    fn saved_meta(&self) -> serde_json::Value {
        serde_json::json!({ "start_step": self.cadence.start })
    }

    /// Refuses a state saved with another start step.
    fn check_saved(&self, saved: &SavedAverager) -> Result<(), AveragingError> {
        let saved_start = saved.counter("start_step")?;
        if saved_start != self.cadence.start {
            return Err(saved.bad(format!(
                "saved start step {saved_start}, now {}",
                self.cadence.start
            )));
        }
        Ok(())
    }
}

running_average_core!(Swa);
