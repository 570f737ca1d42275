use serde::{Deserialize, Serialize};

/// A learning-rate schedule: the rate for optimizer step `it` (0 for the first step) given the
/// peak rate and the run's total steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// Linear warm-up from 0 over `warmup` steps, then cosine decay to `min_lr` at `decay_end`
    /// (default: the last step), constant after (nanoGPT's `get_lr`, as the paper's authors use
    /// it: `lr * it / warmup` during warm-up).
    Cosine {
        /// Warm-up steps.
        warmup: u64,
        /// Final learning rate.
        min_lr: f64,
        /// Step where the cosine reaches `min_lr` (default: total steps).
        #[serde(default)]
        decay_end: Option<u64>,
    },
    /// Linear warm-up, then the peak rate to the end.
    Constant {
        /// Warm-up steps.
        #[serde(default)]
        warmup: u64,
    },
    /// Warm-up / stable / decay: linear warm-up, the peak rate, then a linear cooldown to
    /// `min_lr` over the last `cooldown` steps (Hägele et al. 2024).
    Wsd {
        /// Warm-up steps.
        warmup: u64,
        /// Length of the final decay, in steps.
        cooldown: u64,
        /// Rate at the end of the cooldown.
        min_lr: f64,
    },
}

/// A schedule that cannot work with the run's settings.
#[derive(Debug, thiserror::Error)]
#[error("schedule: {field} = {value} is invalid: {reason}")]
pub struct ScheduleError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// Why.
    pub reason: String,
}

impl Schedule {
    fn warmup(&self) -> u64 {
        match *self {
            Schedule::Cosine { warmup, .. }
            | Schedule::Constant { warmup }
            | Schedule::Wsd { warmup, .. } => warmup,
        }
    }

    /// Checks the schedule against a run of `total_steps` at peak rate `peak_lr`.
    pub fn validate(&self, peak_lr: f64, total_steps: u64) -> Result<(), ScheduleError> {
        let err = |field, value: &dyn ToString, reason: String| ScheduleError {
            field,
            value: value.to_string(),
            reason,
        };
        if self.warmup() > total_steps {
            return Err(err(
                "warmup",
                &self.warmup(),
                format!("longer than training ({total_steps} steps)"),
            ));
        }
        match *self {
            Schedule::Cosine {
                min_lr, decay_end, ..
            } => {
                if !(0.0..=peak_lr).contains(&min_lr) {
                    return Err(err(
                        "min_lr",
                        &min_lr,
                        format!("must be in [0, lr = {peak_lr}]"),
                    ));
                }
                if let Some(end) = decay_end {
                    if end <= self.warmup() {
                        return Err(err("decay_end", &end, "must come after the warm-up".into()));
                    }
                }
            }
            Schedule::Constant { .. } => {}
            Schedule::Wsd {
                warmup,
                cooldown,
                min_lr,
            } => {
                if !(0.0..=peak_lr).contains(&min_lr) {
                    return Err(err(
                        "min_lr",
                        &min_lr,
                        format!("must be in [0, lr = {peak_lr}]"),
                    ));
                }
                if cooldown == 0 || warmup + cooldown > total_steps {
                    return Err(err(
                        "cooldown",
                        &cooldown,
                        format!(
                            "must be between 1 and the {} steps after warm-up",
                            total_steps - warmup
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The learning rate of step `it` (0-based) in a run of `total_steps` with peak `peak_lr`.
    pub fn lr(&self, it: u64, peak_lr: f64, total_steps: u64) -> f64 {
        let warmup = self.warmup();
        if it < warmup {
            return peak_lr * it as f64 / warmup as f64;
        }
        match *self {
            Schedule::Constant { .. } => peak_lr,
            Schedule::Cosine {
                min_lr, decay_end, ..
            } => {
                let end = decay_end.unwrap_or(total_steps);
                if it > end {
                    return min_lr;
                }
                let ratio = (it - warmup) as f64 / (end - warmup).max(1) as f64;
                let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
                min_lr + coeff * (peak_lr - min_lr)
            }
            Schedule::Wsd {
                cooldown, min_lr, ..
            } => {
                let cool_start = total_steps.saturating_sub(cooldown);
                if it < cool_start {
                    peak_lr
                } else {
                    let done = (it - cool_start + 1).min(cooldown) as f64 / cooldown as f64;
                    peak_lr + (min_lr - peak_lr) * done
                }
            }
        }
    }
}
