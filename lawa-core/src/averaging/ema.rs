use super::running_average::{is_due, RunningAverage};
use super::weights::Layout;
use super::{Averager, AveragerState, AveragingError, SnapshotCache, Weights};

/// Exponential moving average of the weights: `ema = lerp(ema, theta, 1 - decay_e)`, the first
/// update a copy.
///
/// Plain form: `decay_e = decay`, as PyTorch's `AveragedModel` with `get_ema_multi_avg_fn`.
/// Warm-up form (the paper authors' `train_small.py`, and timm's `ModelEmaV3` shape):
/// `decay_e = clamp(1 - (1 + e)^(-2/3), 0, decay)` with `e` the number of updates so far.
/// Updates happen every `every` steps from `start` on.
///
/// ```
/// use lawa_core::averaging::Ema;
/// let ema = Ema::with_warmup(0.9).unwrap();
/// assert_eq!(ema.decay_at(0), 0.0);
/// assert!((ema.decay_at(1) - (1.0 - 2f64.powf(-2.0 / 3.0))).abs() < 1e-15);
/// assert_eq!(ema.decay_at(1000), 0.9);
/// ```
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    warmup: bool,
    every: u64,
    start: u64,
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
            every: 1,
            start: 0,
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

    /// Updates every `every` steps instead of every step.
    pub fn every(mut self, every: u64) -> Result<Self, AveragingError> {
        if every == 0 {
            return Err(AveragingError::invalid(
                self.label(),
                "every",
                0,
                "must be at least 1",
            ));
        }
        self.every = every;
        Ok(self)
    }

    /// Makes no update before step `start`.
    pub fn start(mut self, start: u64) -> Self {
        self.start = start;
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

    fn due(&self, step: u64) -> bool {
        is_due(step, self.start, self.every)
    }
}

impl Averager for Ema {
    fn label(&self) -> String {
        let mut label = format!("ema_{}", self.decay);
        if self.warmup {
            label.push_str("_warmup");
        }
        if self.every != 1 {
            label.push_str(&format!("_every{}", self.every));
        }
        if self.start > 0 {
            label.push_str(&format!("_start{}", self.start));
        }
        label
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
        let weight = 1.0 - self.decay_at(self.average.updates());
        let label = self.label();
        self.average
            .update(weights, weight, snapshots.storage(), &label)
    }

    fn is_ready(&self) -> bool {
        self.average.updates() > 0
    }

    fn write_average(&self, target: &Weights) -> Result<(), AveragingError> {
        self.average.write(target, &self.label(), self.start.max(1))
    }

    fn state(&self) -> AveragerState {
        AveragerState {
            label: self.label(),
            meta: serde_json::json!({ "updates": self.average.updates() }),
            tensors: self.average.state_tensors(),
            snapshots: Vec::new(),
        }
    }

    fn restore(&mut self, state: AveragerState, layout: &Layout) -> Result<(), AveragingError> {
        let label = self.label();
        restore_running(&mut self.average, &label, state, layout)
    }
}

/// Restores a running average (EMA or SWA) from its saved state.
pub(crate) fn restore_running(
    average: &mut RunningAverage,
    label: &str,
    state: AveragerState,
    layout: &Layout,
) -> Result<(), AveragingError> {
    if state.label != label {
        return Err(AveragingError::BadState {
            label: label.to_string(),
            reason: format!("the saved state is of `{}`", state.label),
        });
    }
    let updates = state.field_u64("updates")?;
    let expected = if updates == 0 {
        0
    } else {
        layout.names().count()
    };
    if state.tensors.len() != expected {
        return Err(AveragingError::BadState {
            label: label.to_string(),
            reason: format!("{} tensors saved, {expected} expected", state.tensors.len()),
        });
    }
    average.restore(layout.clone(), state.tensors, updates);
    Ok(())
}
