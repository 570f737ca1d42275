//! The rows of a results folder's CSV files, defined once: every writer (training runs, sweeps,
//! post-hoc studies) and every reader (summaries, figures, tests) goes through these types and
//! the `csv` crate, so a run name with a comma or a quote is quoted, not split.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the evaluations of a run or results folder.
pub const CURVES_FILE: &str = "curves.csv";
/// File name of a results folder's per-run summary.
pub const SUMMARY_FILE: &str = "summary.csv";

/// What kind of weights a row is about.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The training weights themselves.
    #[default]
    Raw,
    /// Latest-weight averaging: mean of the latest k snapshots, nu steps apart.
    Lawa,
    /// Exponential moving average with a fixed decay.
    Ema,
    /// Exponential moving average whose decay warms up.
    EmaWarmup,
    /// Stochastic weight averaging: equal-weight mean since a start step.
    Swa,
}

/// The columns that say which weights a row is about: `strategy` and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StrategyColumns {
    /// The averager kind (`None` stands for [`Strategy::Raw`]).
    pub strategy: Option<Strategy>,
    /// LAWA window size.
    pub k: Option<u64>,
    /// LAWA snapshot spacing, in steps.
    pub nu: Option<u64>,
    /// EMA decay.
    pub decay: Option<f64>,
    /// First step averaged (for SWA, possibly a fraction of training).
    pub start: Option<f64>,
    /// Steps between updates.
    pub every: Option<u64>,
}

/// Declares a row type whose first columns say which run and which weights it is about (the
/// same eleven columns in every results file), followed by its own columns.
macro_rules! row_type {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            /// Run id.
            pub run: String,
            /// Model name.
            pub model: String,
            /// Peak learning rate.
            pub lr: f64,
            /// Training seed.
            pub seed: u64,
            /// `raw` or the averager's label.
            pub weights: String,
            /// The averager kind.
            pub strategy: Strategy,
            /// LAWA window size.
            pub k: Option<u64>,
            /// LAWA snapshot spacing in steps.
            pub nu: Option<u64>,
            /// EMA decay.
            pub decay: Option<f64>,
            /// First step averaged (a step, or for SWA possibly a fraction of training).
            pub start: Option<f64>,
            /// Steps between updates.
            pub every: Option<u64>,
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// The strategy columns of this row.
            pub fn strategy_columns(&self) -> StrategyColumns {
                StrategyColumns {
                    strategy: Some(self.strategy),
                    k: self.k,
                    nu: self.nu,
                    decay: self.decay,
                    start: self.start,
                    every: self.every,
                }
            }
        }
    };
}

row_type! {
    /// One row of `curves.csv`: one evaluation of one set of weights of one run, on the run's
    /// fixed windows. Every set of weights of a run at a step is scored on the same windows, so
    /// differences between rows of the same run and step are paired.
    CurveRow {
        /// Optimizer steps done.
        step: u64,
        /// Training tokens seen.
        tokens: u64,
        /// Mean validation loss over the fixed windows (nats).
        val_loss: f64,
        /// Standard error of `val_loss` over the windows.
        val_loss_se: Option<f64>,
        /// Standard error of the gain `raw − this` at this step, paired over the same windows
        /// (empty for the raw weights).
        gain_se: Option<f64>,
        /// Mean loss over the fixed training windows, when measured.
        train_loss: Option<f64>,
        /// Seconds of training so far (across resumes).
        wall_time_s: f64,
    }
}

row_type! {
    /// One row of `summary.csv`: how one set of weights of one run ended, against the raw
    /// weights of the same run.
    SummaryRow {
        /// Last evaluated step.
        final_step: u64,
        /// Validation loss at the last step.
        final_val_loss: f64,
        /// Lowest validation loss seen.
        best_val_loss: f64,
        /// Raw minus this at the last step both have (positive: averaging helps).
        gain_over_raw: Option<f64>,
        /// Standard error of `gain_over_raw`, paired over the evaluation windows.
        gain_se: Option<f64>,
        /// First step at which this reached the raw run's final loss.
        steps_to_raw_final: Option<u64>,
        /// The raw run's last step minus `steps_to_raw_final`.
        steps_saved: Option<i64>,
        /// Whether the run diverged.
        diverged: bool,
    }
}

row_type! {
    /// One row of `tasks.csv`: one metric of one zero-shot task for one set of weights at one
    /// step (scored as lm-evaluation-harness scores it).
    TaskRow {
        /// Optimizer step.
        step: u64,
        /// Training tokens seen.
        tokens: u64,
        /// The task's name.
        task: String,
        /// `acc`, `acc_norm` or `perplexity`.
        metric: String,
        /// Its value.
        value: f64,
        /// Its standard error (none for perplexity).
        se: Option<f64>,
        /// Examples scored.
        examples: u64,
    }
}

/// File name of zero-shot task scores.
pub const TASKS_FILE: &str = "tasks.csv";

/// A problem reading a results CSV: the file, the line, and for a bad value the column.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The file cannot be read or written.
    #[error("{}: {message}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The header is not the schema's.
    #[error("{}:1: wrong header: expected `{expected}`, found `{found}`", .path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// The schema's header.
        expected: String,
        /// The file's first line.
        found: String,
    },
    /// A line that does not parse as a row.
    #[error("{}:{line}: {problem}", .path.display())]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong (with the column, when known).
        problem: String,
    },
}

/// The header line of a row type, from its serde field names.
pub fn header_of<T: Serialize + Default>() -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    // serde writes a header only with the first record; any record will do.
    let _ = w.serialize(T::default());
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The header of `curves.csv`.
pub fn curves_header() -> String {
    header_of::<CurveRow>()
}

/// The header of `summary.csv`.
pub fn summary_header() -> String {
    header_of::<SummaryRow>()
}

/// Reads every row of a results CSV, checking its header against the schema's. Errors name the
/// file, the line and the column, quoting the value.
pub fn read_rows<T: for<'de> Deserialize<'de> + Serialize + Default>(
    path: &Path,
) -> Result<Vec<T>, ResultsError> {
    let text = std::fs::read(path).map_err(|e| ResultsError::Io {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    parse_rows(path, &text)
}

/// Parses the text of a results CSV (see [`read_rows`]); `path` names it in errors.
pub fn parse_rows<T: for<'de> Deserialize<'de> + Serialize + Default>(
    path: &Path,
    text: &[u8],
) -> Result<Vec<T>, ResultsError> {
    let expected = header_of::<T>();
    let mut reader = csv::ReaderBuilder::new().from_reader(text);
    let row_error = |line: u64, problem: String| ResultsError::Row {
        path: path.to_owned(),
        line,
        problem,
    };
    let headers = reader
        .headers()
        .map_err(|e| row_error(1, e.to_string()))?
        .clone();
    let found = headers.iter().collect::<Vec<_>>().join(",");
    if found != expected {
        return Err(ResultsError::Header {
            path: path.to_owned(),
            expected,
            found,
        });
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            row_error(line, csv_problem(&e, &headers))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let row = record
            .deserialize(Some(&headers))
            .map_err(|e| row_error(line, value_problem(&e, &headers, &record)))?;
        rows.push(row);
    }
    Ok(rows)
}

fn csv_problem(e: &csv::Error, headers: &csv::StringRecord) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { len, .. } => format!(
            "expected {} comma-separated fields, found {len}",
            headers.len()
        ),
        _ => e.to_string(),
    }
}

fn value_problem(
    e: &csv::Error,
    headers: &csv::StringRecord,
    record: &csv::StringRecord,
) -> String {
    let csv::ErrorKind::Deserialize { err, .. } = e.kind() else {
        return e.to_string();
    };
    // Numbers carry their column; an unknown strategy name does not, but quotes the value.
    let column = err.field().map(|i| i as usize).or_else(|| {
        let message = err.kind().to_string();
        let quoted = message.split('`').nth(1)?;
        record.iter().position(|v| v == quoted)
    });
    match column {
        Some(i) => format!(
            "column {} ({}): cannot parse {:?}: {}",
            i + 1,
            headers.get(i).unwrap_or("?"),
            record.get(i).unwrap_or(""),
            err.kind()
        ),
        None => err.to_string(),
    }
}

/// The CSV text of `rows`, header first.
pub fn to_csv<T: Serialize + Default>(rows: &[T]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.write_record(header_of::<T>().split(','))?;
    }
    for row in rows {
        w.serialize(row)?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Writes `rows` to `path` atomically, header first.
pub fn write_rows<T: Serialize + Default>(path: &Path, rows: &[T]) -> Result<(), ResultsError> {
    let io = |message: String| ResultsError::Io {
        path: path.to_owned(),
        message,
    };
    let bytes = to_csv(rows).map_err(|e| io(format!("cannot serialize: {e}")))?;
    lawa_core::checkpoint::write_atomic(path, &bytes).map_err(|e| io(format!("cannot write: {e}")))
}

/// An appended CSV's text (`curves.csv`, `tasks.csv`) split into its whole lines and, when its
/// last append was cut short (a kill inside the write), the line fragment after them, without
/// its newline. Text without any newline is left whole (the header is written atomically; the
/// parser reports it).
pub fn split_torn(text: &[u8]) -> (&[u8], Option<&[u8]>) {
    match text.iter().rposition(|&b| b == b'\n') {
        Some(end) if end + 1 < text.len() => (&text[..=end], Some(&text[end + 1..])),
        _ => (text, None),
    }
}

/// Cuts an appended CSV back to its whole lines (see [`split_torn`]), atomically, with a
/// warning quoting what was dropped: for files whose rows are made again when missing (a
/// post-hoc study's evaluations). A missing file is left alone.
pub fn drop_torn_line(path: &Path) -> Result<(), ResultsError> {
    let io = |message: String| ResultsError::Io {
        path: path.to_owned(),
        message,
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("cannot read: {e}"))),
    };
    let (whole, Some(fragment)) = split_torn(&text) else {
        return Ok(());
    };
    lawa_core::checkpoint::write_atomic(path, whole)
        .map_err(|e| io(format!("cannot write: {e}")))?;
    warn_torn(path, &String::from_utf8_lossy(fragment));
    Ok(())
}

/// Warns that `fragment`, the last line of the CSV at `path`, lacked its newline and was dropped,
/// to be made again.
pub fn warn_torn(path: &Path, fragment: &str) {
    tracing::warn!(
        "{}: its last line, {fragment:?}, has no newline (a write cut short by a kill): dropped, \
         and made again",
        path.display()
    );
}

/// The CSV lines of `rows` without a header (to append to a file that has one).
pub fn rows_without_header<T: Serialize>(rows: &[T]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for row in rows {
        w.serialize(row)?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A last line without its newline is cut off; whole files and missing ones are left be.
    #[test]
    fn a_torn_last_line_is_dropped() {
        assert_eq!(
            split_torn(b"a,b\n1,2\n3,"),
            (&b"a,b\n1,2\n"[..], Some(&b"3,"[..]))
        );
        assert_eq!(split_torn(b"a,b\n1,2\n"), (&b"a,b\n1,2\n"[..], None));
        assert_eq!(split_torn(b"a,b"), (&b"a,b"[..], None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.csv");
        drop_torn_line(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "a,b\n1,2\n3,").unwrap();
        drop_torn_line(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\n1,2\n");
        drop_torn_line(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\n1,2\n");
    }

    fn row(run: &str, weights: &str, step: u64, val: f64) -> CurveRow {
        CurveRow {
            run: run.into(),
            model: "tiny".into(),
            lr: 0.006,
            seed: 0,
            weights: weights.into(),
            strategy: if weights == "raw" {
                Strategy::Raw
            } else {
                Strategy::Lawa
            },
            k: (weights != "raw").then_some(5),
            step,
            val_loss: val,
            ..CurveRow::default()
        }
    }

    #[test]
    fn rows_round_trip_and_names_with_commas_and_quotes_survive() {
        let rows = vec![
            row("odd, \"name\"", "raw", 0, 10.5),
            row("odd, \"name\"", "lawa_k5_nu50", 10, f64::NAN),
            row("plain", "raw", 10, 4.25),
        ];
        let bytes = to_csv(&rows).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&curves_header()));
        assert!(text.contains("\"odd, \"\"name\"\"\""), "{text}");
        let back: Vec<CurveRow> = parse_rows(Path::new("curves.csv"), &bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], rows[0]);
        assert!(back[1].val_loss.is_nan());
        assert_eq!(back[2], rows[2]);
        assert_eq!(back[1].k, Some(5));
        assert_eq!(back[0].k, None, "an empty cell is None");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let good = to_csv(&[row("r", "raw", 0, 1.0), row("r", "raw", 10, 2.0)]).unwrap();
        let text = String::from_utf8(good).unwrap().replace(",2.0,", ",3.1.4,");
        let err = parse_rows::<CurveRow>(Path::new("curves.csv"), text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("curves.csv:3: column 14 (val_loss): cannot parse \"3.1.4\""),
            "{err}"
        );
        let err = parse_rows::<CurveRow>(Path::new("curves.csv"), b"run,model\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("curves.csv:1: wrong header"), "{err}");
        let text = format!("{}\nr,tiny\n", curves_header());
        let err = parse_rows::<CurveRow>(Path::new("curves.csv"), text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("curves.csv:2: expected 18"), "{err}");
        let text = String::from_utf8(to_csv(&[row("r", "raw", 0, 1.0)]).unwrap())
            .unwrap()
            .replace(",raw,raw,", ",raw,mean,");
        let err = parse_rows::<CurveRow>(Path::new("curves.csv"), text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("column 6 (strategy)"), "{err}");
    }
}
