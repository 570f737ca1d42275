use serde::{Deserialize, Serialize};

use super::{Averager, AveragingError, Ema, Lawa, Swa, SwaStart};

fn one() -> u64 {
    1
}

fn ten() -> u64 {
    10
}

/// An averager as written in a config file, e.g.
/// `{kind: lawa, k: 5, nu: 50}`, `{kind: ema, decay: 0.99}`, `{kind: swa, start: 0.75}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AveragerSpec {
    /// [`Lawa`]: the latest `k` snapshots every `nu` steps.
    Lawa {
        /// Window size.
        k: usize,
        /// Spacing of snapshots, in steps.
        nu: u64,
        /// No snapshot before this step.
        #[serde(default)]
        start: u64,
    },
    /// [`Ema`].
    Ema {
        /// Decay (the ceiling, with `warmup`).
        decay: f64,
        /// The authors' warm-up form.
        #[serde(default)]
        warmup: bool,
        /// Update interval, in steps.
        #[serde(default = "one")]
        every: u64,
        /// No update before this step.
        #[serde(default)]
        start: u64,
    },
    /// [`Swa`].
    Swa {
        /// A step, or a fraction of training in [0, 1).
        start: SwaStart,
        /// Sampling interval, in steps.
        #[serde(default = "ten")]
        every: u64,
    },
}

impl AveragerSpec {
    /// Builds the averager, for a run of `total_steps` (used to resolve fractional starts and
    /// refuse starts after the end).
    pub fn build(&self, total_steps: Option<u64>) -> Result<Box<dyn Averager>, AveragingError> {
        let after_end = |kind: &str, start: u64| -> Result<(), AveragingError> {
            match total_steps {
                Some(total) if start > total => Err(AveragingError::invalid(
                    kind,
                    "start",
                    start,
                    format!("after the end of training (step {total})"),
                )),
                _ => Ok(()),
            }
        };
        Ok(match *self {
            AveragerSpec::Lawa { k, nu, start } => {
                after_end("lawa", start)?;
                Box::new(Lawa::new(k, nu)?.with_start(start))
            }
            AveragerSpec::Ema {
                decay,
                warmup,
                every,
                start,
            } => {
                after_end("ema", start)?;
                let ema = if warmup {
                    Ema::with_warmup(decay)?
                } else {
                    Ema::new(decay)?
                };
                Box::new(ema.every(every)?.start(start))
            }
            AveragerSpec::Swa { start, every } => Box::new(Swa::new(start, every, total_steps)?),
        })
    }
}
