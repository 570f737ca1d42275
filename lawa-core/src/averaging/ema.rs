use super::cadence::Cadence;
use super::running_average::{running_average_core, RunningAverage};
use super::state::SavedAverager;
use super::{Averager, AveragingError, Storage, Weights};

/// Exponential moving average of the weights: `ema = lerp(ema, theta, 1 - decay_e)`, the first
/// update a copy.
///
/// Plain form: `decay_e = decay`, as PyTorch's `AveragedModel` with `get_ema_multi_avg_fn`.
/// Warm-up form (the paper authors' `train_small.py`, and timm's `ModelEmaV3` shape):
/// `decay_e = clamp(1 - (1 + e)^(-2/3), 0, decay)` with `e` the number of updates so far.
/// Updates happen at step `start` and every `every` steps after (default: every step).
///
/// ```
/// use lawa_core::averaging::Ema;
/// let ema = Ema::with_warmup(0.9)?;
/// assert_eq!(ema.decay_at(0), 0.0);
/// assert!((ema.decay_at(1) - (1.0 - 2f64.powf(-2.0 / 3.0))).abs() < 1e-15);
/// assert_eq!(ema.decay_at(1000), 0.9);
/// let every_ten = Ema::new(0.99)?.every(10)?.start(100);
/// # Ok::<(), lawa_core::averaging::AveragingError>(())
/// ```
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    warmup: bool,
    cadence: Cadence,
    storage: Storage,
    average: RunningAverage,
}

impl Ema {
    fn build(decay: f64, warmup: bool) -> Result<Self, AveragingError> {
        if !(0.0..1.0).contains(&decay) {
            return Err(AveragingError::invalid(
                "ema",
                "decay",
                decay,
                "must be in [0, 1)",
            ));
        }
        Ok(Ema {
            decay,
            warmup,
            cadence: Cadence::new(0, 1),
            storage: Storage::default(),
            average: RunningAverage::default(),
        })
    }

    /// Plain EMA with a constant `decay` in [0, 1).
    pub fn new(decay: f64) -> Result<Self, AveragingError> {
        Self::build(decay, false)
    }

    /// The warm-up form, with `decay` as the ceiling (the authors use 0.9).
    pub fn with_warmup(decay: f64) -> Result<Self, AveragingError> {
        Self::build(decay, true)
    }

    /// Updates every `every` steps (at least 1) instead of every step.
    pub fn every(mut self, every: u64) -> Result<Self, AveragingError> {
        self.cadence.every = checked_every("ema", every)?;
        Ok(self)
    }

    /// The optimizer step of its first update: `start`, or `every` when `start` is 0. An averager
    /// whose first update comes after a run's last step is never ready.
    pub fn first_update(&self) -> u64 {
        self.cadence.first_step()
    }

    /// Takes the first update at step `start`.
    pub fn start(mut self, start: u64) -> Self {
        self.cadence.start = start;
        self
    }

    /// Keeps the average in `storage` (default: on the training device).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// The decay used at the update that follows `e` earlier updates.
    pub fn decay_at(&self, e: u64) -> f64 {
        if self.warmup {
            (1.0 - (1.0 + e as f64).powf(-2.0 / 3.0)).clamp(0.0, self.decay)
        } else {
            self.decay
        }
    }

    /// Number of updates taken.
    pub fn updates(&self) -> u64 {
        self.average.updates()
    }
}

/// An update interval, refused when 0.
pub(crate) fn checked_every(label: &str, every: u64) -> Result<u64, AveragingError> {
    if every == 0 {
        return Err(AveragingError::invalid(
            label,
            "every",
            0,
            "must be at least 1",
        ));
    }
    Ok(every)
}

impl Ema {
    /// The label (see [`Averager::label`]).
    fn name(&self) -> String {
        let mut label = format!("ema_{}", self.decay);
        if self.warmup {
            label.push_str("_warmup");
        }
        if self.cadence.every != 1 {
            label.push_str(&format!("_every{}", self.cadence.every));
        }
        if self.cadence.start > 0 {
            label.push_str(&format!("_start{}", self.cadence.start));
        }
        label
    }

    /// The weight of the next update: 1 - the decay (at its warm-up).
    fn next_weight(&self) -> f64 {
        1.0 - self.decay_at(self.average.updates())
    }

    /// What a saved state records besides the running average.
    fn saved_meta(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    /// Refuses a saved state that does not fit this EMA (the label is checked on restore).
    fn check_saved(&self, _saved: &SavedAverager) -> Result<(), AveragingError> {
        Ok(())
    }
}

running_average_core!(Ema);
