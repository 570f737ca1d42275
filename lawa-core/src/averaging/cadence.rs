use super::state::SavedAverager;
use super::{AveragingError, Weights};

/// The key of the last step observed in an averager's saved state.
const LAST_STEP: &str = "last_step";

/// When an averager takes an update: at step `start` and every `every` steps after it. The one
/// rule LAWA (snapshots), EMA (updates) and SWA (samples) share, so `start` and `every` mean the
/// same thing for all three. It also keeps the last step observed, so that a step given twice or
/// out of order is refused rather than averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cadence {
    pub(crate) start: u64,
    pub(crate) every: u64,
    last: Option<u64>,
}

impl Cadence {
    /// Every `every` steps (at least 1) from `start` on.
    pub(crate) fn new(start: u64, every: u64) -> Self {
        Cadence {
            start,
            every,
            last: None,
        }
    }

    /// Records that `weights` are observed after step `step`; returns whether an update is due.
    /// Refuses a step that does not come after the last one observed, and weights without a
    /// tensor.
    pub(crate) fn observe(
        &mut self,
        step: u64,
        weights: &Weights,
        label: &str,
    ) -> Result<bool, AveragingError> {
        check_step(self.last, step, label)?;
        if weights.is_empty() {
            return Err(AveragingError::NoWeights {
                label: label.to_string(),
            });
        }
        self.last = Some(step);
        Ok(self.is_due(step))
    }

    /// The last step observed, if any.
    pub(crate) fn last(&self) -> Option<u64> {
        self.last
    }

    /// Adds the last step observed to a saved state's counters.
    pub(crate) fn save_into(&self, meta: &mut serde_json::Value) {
        if let Some(last) = self.last {
            meta[LAST_STEP] = last.into();
        }
    }

    /// Takes the last step observed from a saved state (none in states saved before lawa
    /// recorded it: the next step is then taken as it comes).
    pub(crate) fn restore_from(&mut self, saved: &SavedAverager) {
        self.last = last_step(&saved.meta);
    }

    /// Whether an update is due after optimizer step `step`.
    pub(crate) fn is_due(&self, step: u64) -> bool {
        step >= self.start && (step - self.start).is_multiple_of(self.every)
    }

    /// The first step (counting from 1, the first optimizer step) at which an update is due.
    pub(crate) fn first_step(&self) -> u64 {
        if self.start >= 1 {
            self.start
        } else {
            self.every
        }
    }
}

/// The last step observed recorded in a saved averager's counters.
pub(crate) fn last_step(meta: &serde_json::Value) -> Option<u64> {
    meta.get(LAST_STEP).and_then(serde_json::Value::as_u64)
}

/// Refuses `step` unless it comes after `last`.
pub(crate) fn check_step(last: Option<u64>, step: u64, label: &str) -> Result<(), AveragingError> {
    match last {
        Some(last) if step <= last => Err(AveragingError::StepOrder {
            label: label.to_string(),
            step,
            last,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_steps_and_first_step() {
        let due = |c: Cadence| (1..=30).filter(|&s| c.is_due(s)).collect::<Vec<_>>();
        assert_eq!(due(Cadence::new(0, 10)), [10, 20, 30]);
        assert_eq!(due(Cadence::new(15, 10)), [15, 25]);
        assert_eq!(due(Cadence::new(0, 1)).len(), 30);
        assert_eq!(Cadence::new(0, 10).first_step(), 10);
        assert_eq!(Cadence::new(15, 10).first_step(), 15);
        assert_eq!(Cadence::new(0, 1).first_step(), 1);
    }
}
