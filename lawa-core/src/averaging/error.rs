/// What can go wrong when configuring, feeding or reading an averager. New kinds may be added:
/// a `match` on it needs a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AveragingError {
    /// A parameter outside its allowed range (k = 0, a decay of 1, a start after the end...).
    #[error("{averager}: {field} = {value} is invalid: {reason}")]
    InvalidParameter {
        /// The averager's kind or label.
        averager: String,
        /// The parameter's name.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Weights whose names, shapes or dtypes differ from those seen before.
    #[error("{context}: tensor `{name}`: {problem}")]
    LayoutMismatch {
        /// Where the mismatch was found.
        context: String,
        /// The tensor's name.
        name: String,
        /// What differs.
        problem: String,
    },
    /// An averager asked for its weights before it has observed any.
    #[error("{label}: no weights observed yet (first at step {first_step})")]
    NotReady {
        /// The averager's label.
        label: String,
        /// The first step at which it will have weights.
        first_step: u64,
    },
    /// A step that does not come after the last one observed: averaging it would count a
    /// snapshot twice or break the window's order.
    #[error(
        "{label}: step {step} observed after step {last}: steps must increase (observe once per \
         optimizer step, after it; a resumed run goes on after its checkpoint's step, with the \
         averagers saved at that step)"
    )]
    StepOrder {
        /// The averager's label (`averagers` for a set).
        label: String,
        /// The step given.
        step: u64,
        /// The last step observed.
        last: u64,
    },
    /// Weights without a tensor, as `Weights::from_var_store` gives before the model's variables
    /// are made.
    #[error("{label}: the weights hold no tensor (build Weights after the model's variables)")]
    NoWeights {
        /// The averager's label (`averagers` for a set).
        label: String,
    },
    /// A saved state that does not fit this averager.
    #[error("{label}: cannot restore state: {reason}")]
    BadState {
        /// The averager's label.
        label: String,
        /// What is wrong.
        reason: String,
    },
    /// An update of an average, or a snapshot, kept in host memory failed on its background
    /// thread; the average (or the averagers reading the snapshot) is unusable from then on.
    #[error(
        "{label}: an update in host memory failed: {reason} (the average is lost: load a saved \
         state or start the averager anew)"
    )]
    UpdateFailed {
        /// The averager's label (`snapshots` for a set's shared snapshots).
        label: String,
        /// What failed.
        reason: String,
    },
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A multi-tensor kernel failed.
    #[error(transparent)]
    Kernel(#[from] lawa_ops::OpsError),
    /// A saved state that cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// An I/O error on a named file.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
}

impl AveragingError {
    pub(crate) fn invalid(
        averager: impl Into<String>,
        field: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        AveragingError::InvalidParameter {
            averager: averager.into(),
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
