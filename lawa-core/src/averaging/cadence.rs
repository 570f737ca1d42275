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

    /// Whether an update is due for `weights` observed after step `step`. Refuses a step that
    /// does not come after the last one recorded, and weights without a tensor; `label` names
    /// the averager in the error (built only then).
    pub(crate) fn admit(
        &self,
        step: u64,
        weights: &Weights,
        label: &dyn Fn() -> String,
    ) -> Result<bool, AveragingError> {
        check_step(self.last, step, label)?;
        if weights.is_empty() {
            return Err(AveragingError::NoWeights { label: label() });
        }
        Ok(self.is_due(step))
    }

    /// Records `step` as observed, once its update (if one was due) has succeeded: a failed
    /// update may be tried again at the same step.
    pub(crate) fn record(&mut self, step: u64) {
        self.last = Some(step);
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

    /// Takes the last step observed from a saved state; states saved before lawa recorded it
    /// give `fallback` (a LAWA's newest snapshot; none for EMA and SWA, whose next step is then
    /// taken as it comes).
    pub(crate) fn restore_from(&mut self, saved: &SavedAverager, fallback: Option<u64>) {
        self.last = saved
            .meta
            .get(LAST_STEP)
            .and_then(serde_json::Value::as_u64)
            .or(fallback);
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

/// Refuses `step` unless it comes after `last`; `label` names the averager in the error.
pub(crate) fn check_step(
    last: Option<u64>,
    step: u64,
    label: &dyn Fn() -> String,
) -> Result<(), AveragingError> {
    match last {
        Some(last) if step <= last => Err(AveragingError::StepOrder {
            label: label(),
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
