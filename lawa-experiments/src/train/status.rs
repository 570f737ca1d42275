//! `status.json`: how a run ended, written when it ends (finished or diverged) and read to skip
//! it on a re-run. Non-finite losses are written as strings (`"NaN"`, `"inf"`), since JSON has
//! no number for them, and read back as they were.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// File written into the run folder when a run ends.
pub const STATUS_FILE: &str = "status.json";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// All steps done.
    Finished,
    /// A non-finite loss or gradient norm stopped it.
    Diverged,
}

/// The end of a run, as saved in `status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOutcome {
    /// Finished or diverged.
    pub status: RunStatus,
    /// Steps done (for a diverged run: the step whose loss was not finite).
    pub step: u64,
    /// Last validation loss of the raw weights (NaN if never evaluated).
    #[serde(with = "float")]
    pub final_val_loss: f64,
    /// Training throughput of the last session, tokens per second.
    #[serde(with = "float")]
    pub tokens_per_second: f64,
    /// Seconds of training in all.
    #[serde(with = "float")]
    pub wall_time: f64,
}

/// f64 as a JSON number when finite, else as the string Rust prints (`NaN`, `inf`, `-inf`).
mod float {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(f64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(v) => Ok(v),
            Either::Text(t) => t
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number"))),
        }
    }
}

/// Writes `status.json` into the run folder, atomically.
pub fn write(dir: &Path, outcome: &RunOutcome) -> Result<()> {
    let json = serde_json::to_vec_pretty(outcome)?;
    let path = dir.join(STATUS_FILE);
    lawa_core::checkpoint::write_atomic(&path, &json)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The outcome of a run that already ended: `None` when it has not (no `status.json`); an error
/// naming the file when one is there but unreadable.
pub fn read(dir: &Path) -> Result<Option<RunOutcome>> {
    let path = dir.join(STATUS_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let outcome = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: corrupt; delete it to train the run's last steps again",
            path.display()
        )
    })?;
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_losses_round_trip_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let outcome = RunOutcome {
            status: RunStatus::Diverged,
            step: 7,
            final_val_loss: f64::NAN,
            tokens_per_second: f64::INFINITY,
            wall_time: 1.5,
        };
        write(dir.path(), &outcome).unwrap();
        let back = read(dir.path()).unwrap().unwrap();
        assert_eq!(back.status, RunStatus::Diverged);
        assert!(back.final_val_loss.is_nan());
        assert_eq!(back.tokens_per_second, f64::INFINITY);
        assert_eq!(back.wall_time, 1.5);
        std::fs::write(dir.path().join(STATUS_FILE), "{\"status\": \"finished\"").unwrap();
        let err = format!("{:#}", read(dir.path()).unwrap_err());
        assert!(err.contains("status.json: corrupt"), "{err}");
    }
}
