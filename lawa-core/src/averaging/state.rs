use tch::Tensor;

use super::AveragingError;

/// The saved state of one averager: its label, counters as JSON, running-average tensors in
/// weight order, and the steps of the snapshots it holds (the snapshots themselves are saved
/// once per step by the set).
#[derive(Debug)]
pub struct SavedAverager {
    pub(crate) label: String,
    pub(crate) meta: serde_json::Value,
    pub(crate) tensors: Vec<Tensor>,
    pub(crate) snapshot_steps: Vec<u64>,
}

impl SavedAverager {
    /// A counter of the saved state; missing or malformed is an error naming it.
    pub(crate) fn counter(&self, key: &str) -> Result<u64, AveragingError> {
        self.meta
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| self.bad(format!("missing counter `{key}`")))
    }

    /// An error about this saved state.
    pub(crate) fn bad(&self, reason: impl Into<String>) -> AveragingError {
        AveragingError::BadState {
            label: self.label.clone(),
            reason: reason.into(),
        }
    }

    /// Refuses a state saved by another averager.
    pub(crate) fn check_label(&self, label: &str) -> Result<(), AveragingError> {
        if self.label != label {
            return Err(AveragingError::BadState {
                label: label.to_string(),
                reason: format!("the saved state is of `{}`", self.label),
            });
        }
        Ok(())
    }
}
