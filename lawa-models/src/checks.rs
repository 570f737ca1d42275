//! The checks a model configuration must pass before a model is built, shared by GPT-2's
//! [`GptConfig`](crate::GptConfig) and GPT-NeoX's [`NeoxConfig`](crate::NeoxConfig). Each
//! failure is a [`ModelError::BadConfig`] naming the field, its value and the rule.

use crate::config::MAX_VALUES;
use crate::ModelError;

/// A [`ModelError::BadConfig`] for `field = value`, rejected for `reason`.
pub(crate) fn bad(field: &str, value: impl ToString, reason: impl Into<String>) -> ModelError {
    ModelError::BadConfig {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Every size is at least 1.
pub(crate) fn sizes(fields: &[(&str, usize)]) -> Result<(), ModelError> {
    match fields.iter().find(|(_, value)| *value == 0) {
        Some((field, _)) => Err(bad(field, 0, "must be at least 1")),
        None => Ok(()),
    }
}

/// `(field, value)` is a multiple of `(of_field, of)` (which [`sizes`] has checked is not 0).
pub(crate) fn multiple(
    (field, value): (&str, usize),
    (of_field, of): (&str, usize),
) -> Result<(), ModelError> {
    if value.is_multiple_of(of) {
        Ok(())
    } else {
        Err(bad(
            field,
            value,
            format!("must be a multiple of {of_field} = {of}"),
        ))
    }
}

/// Every dropout probability is in `[0, 1)`.
pub(crate) fn dropouts(fields: &[(&str, f64)]) -> Result<(), ModelError> {
    match fields.iter().find(|(_, p)| !(0.0..1.0).contains(p)) {
        Some((field, p)) => Err(bad(field, p, "must be in [0, 1)")),
        None => Ok(()),
    }
}

/// The model holds at most [`MAX_VALUES`] values; `shape` describes it for the message, and the
/// error names `field`, the size that is most likely the mistake.
pub(crate) fn stored_values(
    values: u128,
    (field, value): (&str, usize),
    shape: &str,
) -> Result<(), ModelError> {
    if values <= MAX_VALUES {
        return Ok(());
    }
    Err(bad(
        field,
        value,
        format!(
            "{shape}the model would hold {:.3e} values; lawa builds models of at most {MAX_VALUES:.0e}",
            values as f64
        ),
    ))
}
