//! A run's `curves.csv`, appended to as evaluations happen, in the results schema.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::results::schema::{parse_rows, rows_without_header, to_csv};
use crate::results::CurveRow;

/// Appends rows to a run's `curves.csv`, each write synced to disk.
#[derive(Debug)]
pub struct CurvesLog {
    path: PathBuf,
    file: std::fs::File,
}

impl CurvesLog {
    /// Opens `path` for a run that continues after step `resume` (`None`: a fresh start).
    /// Rows of later steps were written after the checkpoint being resumed and are about to be
    /// produced again: they are dropped (atomically), as is everything on a fresh start, so no
    /// row is ever duplicated.
    ///
    /// Rows that could not be made again are never dropped: a resume without the file, or a
    /// fresh start over rows past `first_checkpoint` (the step of the run's first checkpoint:
    /// rows after it mean a checkpoint was written, and has since been removed), is refused.
    pub fn open(path: &Path, resume: Option<u64>, first_checkpoint: u64) -> Result<Self> {
        // A row cut short was being written after the last checkpoint: it is made again.
        crate::results::schema::drop_torn_line(path)?;
        let existing = match std::fs::read(path) {
            Ok(text) => parse_rows::<CurveRow>(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(step) = resume.filter(|&s| s > 0) {
                    bail!(
                        "{}: missing, but the run's checkpoint is at step {step}: the evaluations \
                         before it cannot be made again; restore the file, or remove the run \
                         folder to train from step 0",
                        path.display()
                    );
                }
                Vec::new()
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        let kept: Vec<CurveRow> = match resume {
            Some(step) => existing.into_iter().filter(|r| r.step <= step).collect(),
            None => {
                if let Some(last) = existing.iter().map(|r| r.step).max() {
                    if last > first_checkpoint {
                        bail!(
                            "{}: rows up to step {last}, but the run's checkpoint is gone (one \
                             was written by then, the first at step {first_checkpoint}): starting \
                             again from step 0 would drop them; restore the checkpoint, or remove \
                             the run folder to train from step 0",
                            path.display()
                        );
                    }
                }
                Vec::new()
            }
        };
        let text = to_csv(&kept).with_context(|| format!("{}: cannot write", path.display()))?;
        lawa_core::checkpoint::write_atomic(path, &text)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(CurvesLog {
            path: path.to_owned(),
            file,
        })
    }

    /// Appends rows and syncs them to disk.
    pub fn write(&mut self, rows: &[CurveRow]) -> Result<()> {
        let text = rows_without_header(rows)?;
        self.file
            .write_all(&text)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}
