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
        let existing = match std::fs::read(path) {
            Ok(text) => {
                let (whole, torn) = crate::results::schema::split_torn(&text);
                if let Some(fragment) = torn {
                    let header = whole.split(|&b| b == b'\n').next().unwrap_or_default();
                    check_torn(path, header, fragment, resume)?;
                }
                parse_rows::<CurveRow>(path, whole)?
            }
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

/// A row a kill cut short inside its append (a last line without its newline) is later than
/// the checkpoint being resumed (a step's rows are written before its checkpoint): it is
/// dropped, with a warning, and made again. Such a line at or before that checkpoint is not one
/// lawa left, and is refused rather than dropped.
fn check_torn(path: &Path, header: &[u8], fragment: &[u8], resume: Option<u64>) -> Result<()> {
    let text = String::from_utf8_lossy(fragment);
    let column = String::from_utf8_lossy(header)
        .split(',')
        .position(|name| name == "step");
    // The step is whole only where a comma follows it.
    let fields: Vec<&str> = text.split(',').collect();
    let step = column
        .filter(|&i| i + 1 < fields.len())
        .and_then(|i| fields[i].parse::<u64>().ok());
    if let (Some(step), Some(at)) = (step, resume) {
        if step <= at {
            bail!(
                "{}: its last line, of step {step}, has no newline, yet the run's checkpoint is \
                 at step {at}: not a row a kill cut short; end the line with a newline, or \
                 remove it",
                path.display()
            );
        }
    }
    crate::results::schema::warn_torn(path, &text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fragment after the checkpoint (or with its step cut) is dropped; a line without its
    /// newline at or before the checkpoint is refused.
    #[test]
    fn only_rows_after_the_checkpoint_count_as_cut_short() {
        let path = Path::new("curves.csv");
        let header = crate::results::schema::curves_header();
        let row = |step: u64| {
            let row = CurveRow {
                step,
                val_loss: 4.25,
                ..CurveRow::default()
            };
            String::from_utf8(rows_without_header(&[row]).unwrap()).unwrap()
        };
        // Cut after the step's comma, or inside the step.
        let cut = |text: String, fields: usize| {
            text[..=text.match_indices(',').nth(fields).unwrap().0].to_string()
        };
        let step_column = header.split(',').position(|c| c == "step").unwrap();
        let check = |fragment: &str, resume| {
            check_torn(path, header.as_bytes(), fragment.as_bytes(), resume)
        };
        assert!(check(&cut(row(30), step_column + 1), Some(20)).is_ok());
        let inside_step = cut(row(20), step_column - 1) + "2";
        assert!(check(&inside_step, Some(20)).is_ok(), "step 2x, cut");
        assert!(
            check(&cut(row(10), step_column + 1), None).is_ok(),
            "a fresh start"
        );
        let err = check(&cut(row(20), step_column + 2), Some(20)).unwrap_err();
        assert!(
            err.to_string().contains("of step 20, has no newline"),
            "{err}"
        );
    }
}
