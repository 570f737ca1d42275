//! Loading `curves.csv` and `summary.csv` into typed rows. Any problem is one error naming the
//! file, the line and the column.

use std::path::{Path, PathBuf};

/// The header `curves.csv` must have.
pub const CURVES_HEADER: &str =
    "run,model,lr,seed,weights,strategy,k,nu,decay,start,every,step,tokens,val_loss,train_loss,wall_time_s";

/// The header `summary.csv` must have.
pub const SUMMARY_HEADER: &str = "run,model,lr,seed,weights,strategy,k,nu,decay,start,every,\
final_step,final_val_loss,best_val_loss,gain_over_raw,steps_to_raw_final,steps_saved,diverged";

/// A problem in an input CSV: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvError {
    /// The file could not be read.
    #[error("{}: cannot read: {message}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The first line is not the expected header.
    #[error("{}:1: wrong header: expected `{expected}`, found `{found}`", .path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// The header the file must have.
        expected: String,
        /// The first line as found.
        found: String,
    },
    /// A data line has the wrong number of fields.
    #[error("{}:{line}: expected {expected} comma-separated fields, found {found}", .path.display())]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fields the header has.
        expected: usize,
        /// Fields on the line.
        found: usize,
    },
    /// A field holds a value that does not parse, or is missing where one is required.
    #[error("{}:{line}: column {column} ({name}): {problem}", .path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column number.
        column: usize,
        /// The column's header name.
        name: &'static str,
        /// What is wrong, quoting the value.
        problem: String,
    },
}

/// A set of weights' kind, from the `strategy` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// The training weights themselves.
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

impl Strategy {
    /// Parses the `strategy` column.
    pub fn parse(text: &str) -> Option<Strategy> {
        Some(match text {
            "raw" => Strategy::Raw,
            "lawa" => Strategy::Lawa,
            "ema" => Strategy::Ema,
            "ema_warmup" => Strategy::EmaWarmup,
            "swa" => Strategy::Swa,
            _ => return None,
        })
    }
}

/// The columns naming a run and a set of weights, shared by both CSVs.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsId {
    /// Run id.
    pub run: String,
    /// Model preset name.
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
}

/// One row of `curves.csv`: one evaluation of one set of weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveRow {
    /// Which run and weights.
    pub id: WeightsId,
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Validation loss (nats).
    pub val_loss: f64,
    /// Training loss (nats), when measured.
    pub train_loss: Option<f64>,
    /// Seconds of training so far.
    pub wall_time_s: f64,
}

/// One row of `summary.csv` (only what the figures use is kept besides the id).
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Which run and weights.
    pub id: WeightsId,
    /// Last evaluated step.
    pub final_step: u64,
    /// Validation loss at the last step.
    pub final_val_loss: f64,
    /// Whether the run diverged.
    pub diverged: bool,
}

/// The fields of one data line, with what is needed to name a bad one.
struct Fields<'a> {
    path: &'a Path,
    line: usize,
    names: &'a [&'static str],
    values: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    fn error(&self, column: usize, problem: String) -> CsvError {
        CsvError::Value {
            path: self.path.to_owned(),
            line: self.line,
            column: column + 1,
            name: self.names[column],
            problem,
        }
    }

    fn text(&self, column: usize) -> Result<&'a str, CsvError> {
        let value = self.values[column];
        if value.is_empty() {
            return Err(self.error(column, "empty, a value is required".into()));
        }
        Ok(value)
    }

    fn parsed<T: std::str::FromStr>(&self, column: usize, what: &str) -> Result<T, CsvError> {
        let value = self.text(column)?;
        value
            .parse()
            .map_err(|_| self.error(column, format!("cannot parse {value:?} as {what}")))
    }

    fn optional<T: std::str::FromStr>(
        &self,
        column: usize,
        what: &str,
    ) -> Result<Option<T>, CsvError> {
        if self.values[column].is_empty() {
            Ok(None)
        } else {
            self.parsed(column, what).map(Some)
        }
    }

    fn float(&self, column: usize) -> Result<f64, CsvError> {
        self.parsed(column, "a number")
    }

    fn integer(&self, column: usize) -> Result<u64, CsvError> {
        self.parsed(column, "a non-negative integer")
    }

    fn boolean(&self, column: usize) -> Result<bool, CsvError> {
        match self.text(column)? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(self.error(column, format!("cannot parse {other:?} as true/false"))),
        }
    }

    /// The first eleven columns, common to both files.
    fn weights_id(&self) -> Result<WeightsId, CsvError> {
        let strategy_text = self.text(5)?;
        let strategy = Strategy::parse(strategy_text).ok_or_else(|| {
            self.error(
                5,
                format!(
                    "unknown strategy {strategy_text:?} (expected raw, lawa, ema, ema_warmup or swa)"
                ),
            )
        })?;
        Ok(WeightsId {
            run: self.text(0)?.to_owned(),
            model: self.text(1)?.to_owned(),
            lr: self.float(2)?,
            seed: self.integer(3)?,
            weights: self.text(4)?.to_owned(),
            strategy,
            k: self.optional(6, "a non-negative integer")?,
            nu: self.optional(7, "a non-negative integer")?,
            decay: self.optional(8, "a number")?,
            start: self.optional(9, "a number")?,
            every: self.optional(10, "a non-negative integer")?,
        })
    }
}

/// Reads `path`, checks its header and hands each data line's fields to `row`.
fn load<T>(
    path: &Path,
    header: &'static str,
    mut row: impl FnMut(&Fields) -> Result<T, CsvError>,
) -> Result<Vec<T>, CsvError> {
    let text = std::fs::read_to_string(path).map_err(|e| CsvError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut lines = text.lines();
    let found = lines.next().unwrap_or("").trim_end_matches('\r');
    if found != header {
        return Err(CsvError::Header {
            path: path.to_owned(),
            expected: header.to_owned(),
            found: found.to_owned(),
        });
    }
    let names: Vec<&'static str> = header.split(',').collect();
    let mut rows = Vec::new();
    for (index, line) in lines.enumerate() {
        let line_no = index + 2;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let values: Vec<&str> = line.split(',').collect();
        if values.len() != names.len() {
            return Err(CsvError::FieldCount {
                path: path.to_owned(),
                line: line_no,
                expected: names.len(),
                found: values.len(),
            });
        }
        let fields = Fields {
            path,
            line: line_no,
            names: &names,
            values,
        };
        rows.push(row(&fields)?);
    }
    Ok(rows)
}

/// Loads `curves.csv`.
pub fn load_curves(path: &Path) -> Result<Vec<CurveRow>, CsvError> {
    load(path, CURVES_HEADER, |f| {
        Ok(CurveRow {
            id: f.weights_id()?,
            step: f.integer(11)?,
            tokens: f.integer(12)?,
            val_loss: f.float(13)?,
            train_loss: f.optional(14, "a number")?,
            wall_time_s: f.float(15)?,
        })
    })
}

/// Loads `summary.csv`, checking every column's type.
pub fn load_summary(path: &Path) -> Result<Vec<SummaryRow>, CsvError> {
    load(path, SUMMARY_HEADER, |f| {
        let _best: f64 = f.float(13)?;
        let _gain: f64 = f.float(14)?;
        let _to_raw: Option<u64> = f.optional(15, "a non-negative integer")?;
        let _saved: Option<f64> = f.optional(16, "a number")?;
        Ok(SummaryRow {
            id: f.weights_id()?,
            final_step: f.integer(11)?,
            final_val_loss: f.float(12)?,
            diverged: f.boolean(17)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn parses_rows_of_every_strategy() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "curves.csv",
            &format!(
                "{CURVES_HEADER}\n\
                 r,tiny,0.006,0,raw,raw,,,,,,0,0,10.5,10.4,0.0\n\
                 r,tiny,0.006,0,lawa_k5_nu50,lawa,5,50,,0,50,100,800,4.5,,1.5\n\
                 r,tiny,0.006,0,ema_0.9_warmup,ema_warmup,,,0.9,0,1,100,800,4.6,4.5,1.5\n\
                 r,tiny,0.006,0,swa_start0.75_every10,swa,,,,0.75,10,100,800,NaN,,1.5\n"
            ),
        );
        let rows = load_curves(&path).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].id.strategy, Strategy::Lawa);
        assert_eq!((rows[1].id.k, rows[1].id.nu), (Some(5), Some(50)));
        assert_eq!(rows[1].train_loss, None);
        assert_eq!(rows[2].id.decay, Some(0.9));
        assert_eq!(rows[3].id.start, Some(0.75));
        assert!(rows[3].val_loss.is_nan());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "curves.csv",
            &format!(
                "{CURVES_HEADER}\nr,tiny,0.006,0,raw,raw,,,,,,0,0,10.5,,0.0\n\
                 r,tiny,0.006,0,raw,raw,,,,,,10,80,4.x,,0.1\n"
            ),
        );
        let err = load_curves(&path).unwrap_err().to_string();
        assert!(err.contains("curves.csv:3: column 14 (val_loss)"), "{err}");
        assert!(err.contains("\"4.x\""), "{err}");

        std::fs::write(&path, "run,model\n").unwrap();
        let err = load_curves(&path).unwrap_err().to_string();
        assert!(err.contains("curves.csv:1: wrong header"), "{err}");

        std::fs::write(&path, format!("{CURVES_HEADER}\nr,tiny\n")).unwrap();
        let err = load_curves(&path).unwrap_err().to_string();
        assert!(err.contains("curves.csv:2: expected 16"), "{err}");

        std::fs::write(
            &path,
            format!("{CURVES_HEADER}\nr,tiny,0.006,0,x,mean,,,,,,0,0,1,,0\n"),
        )
        .unwrap();
        let err = load_curves(&path).unwrap_err().to_string();
        assert!(
            err.contains("column 6 (strategy): unknown strategy"),
            "{err}"
        );
    }

    #[test]
    fn summary_parses_and_checks_diverged() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "summary.csv",
            &format!(
                "{SUMMARY_HEADER}\n\
                 r,tiny,0.006,0,raw,raw,,,,,,100,4.0,3.9,0,100,0,false\n\
                 r,tiny,0.006,0,lawa_k5_nu50,lawa,5,50,,0,50,100,3.8,3.8,0.2,60,40,true\n"
            ),
        );
        let rows = load_summary(&path).unwrap();
        assert!(!rows[0].diverged && rows[1].diverged);
        std::fs::write(
            &path,
            format!("{SUMMARY_HEADER}\nr,tiny,0.006,0,raw,raw,,,,,,100,4.0,3.9,0,,,maybe\n"),
        )
        .unwrap();
        let err = load_summary(&path).unwrap_err().to_string();
        assert!(err.contains("summary.csv:2: column 18 (diverged)"), "{err}");
    }
}
