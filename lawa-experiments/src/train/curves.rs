//! A run's `curves.csv`, appended to as evaluations happen, in the results schema.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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
    pub fn open(path: &Path, resume: Option<u64>) -> Result<Self> {
        let kept: Vec<CurveRow> = match (resume, std::fs::read(path)) {
            (Some(step), Ok(text)) => parse_rows::<CurveRow>(path, &text)?
                .into_iter()
                .filter(|r| r.step <= step)
                .collect(),
            _ => Vec::new(),
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
