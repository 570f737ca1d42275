//! The tidy CSV of a run's evaluations: one row per (step, weights), written as produced.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lawa_core::averaging::{AveragerSpec, SwaStart};

/// The header of `curves.csv`.
pub const HEADER: &str =
    "run,model,lr,seed,weights,strategy,k,nu,decay,start,every,step,tokens,val_loss,train_loss,wall_time_s";

/// The strategy columns of a set of weights: strategy, k, nu, decay, start, every.
pub fn strategy_columns(spec: Option<&AveragerSpec>) -> [String; 6] {
    let s = |v: &dyn ToString| v.to_string();
    match spec {
        None => [
            "raw".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ],
        Some(AveragerSpec::Lawa { k, nu, start }) => {
            ["lawa".into(), s(k), s(nu), "".into(), s(start), s(nu)]
        }
        Some(AveragerSpec::Ema {
            decay,
            warmup,
            every,
            start,
        }) => [
            if *warmup { "ema_warmup" } else { "ema" }.into(),
            "".into(),
            "".into(),
            s(decay),
            s(start),
            s(every),
        ],
        Some(AveragerSpec::Swa { start, every }) => [
            "swa".into(),
            "".into(),
            "".into(),
            "".into(),
            match start {
                SwaStart::Step(x) => s(x),
                SwaStart::Fraction(x) => s(x),
            },
            s(every),
        ],
    }
}

/// One row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `run,model,lr,seed` of the run, pre-formatted.
    pub run_columns: String,
    /// `raw` or the averager's label.
    pub weights: String,
    /// From [`strategy_columns`].
    pub strategy: [String; 6],
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Mean validation loss over the fixed windows.
    pub val_loss: f64,
    /// Mean loss over the fixed training windows (None when not measured).
    pub train_loss: Option<f64>,
    /// Seconds of training so far (across resumes).
    pub wall_time: f64,
}

impl Row {
    /// The CSV line (no newline).
    pub fn line(&self) -> String {
        format!(
            "{},{},{},{},{},{:.6},{},{:.1}",
            self.run_columns,
            self.weights,
            self.strategy.join(","),
            self.step,
            self.tokens,
            self.val_loss,
            self.train_loss
                .map(|l| format!("{l:.6}"))
                .unwrap_or_default(),
            self.wall_time
        )
    }
}

/// Appends rows to a run's `curves.csv`.
#[derive(Debug)]
pub struct CurvesWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl CurvesWriter {
    /// Opens `path` for a run resuming after `step` (0 for a fresh run): rows of later steps,
    /// written after the last checkpoint and about to be produced again, are dropped (atomically)
    /// so no row is duplicated.
    pub fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let kept: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .skip(1)
                .filter(|line| step_of(line).is_some_and(|s| s <= resume_step))
                .map(String::from)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut text = String::from(HEADER);
        text.push('\n');
        for line in &kept {
            text.push_str(line);
            text.push('\n');
        }
        lawa_core::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(CurvesWriter {
            path: path.to_owned(),
            file,
        })
    }

    /// Appends rows and flushes them to disk.
    pub fn write(&mut self, rows: &[Row]) -> Result<()> {
        let mut text = String::new();
        for row in rows {
            text.push_str(&row.line());
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

/// The `step` column of a data line.
pub fn step_of(line: &str) -> Option<u64> {
    line.split(',').nth(11)?.parse().ok()
}
