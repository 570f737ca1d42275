//! A results folder's data, independent of libtorch: the row types of `curves.csv` and
//! `summary.csv` ([`schema`]), the metrics both summaries and figures compute ([`metrics`]), the
//! summary itself ([`summary`]) and the seed summary of gains ([`gains`]). Nothing here imports `tch`.

pub mod compute;
pub mod gains;
pub mod metrics;
pub mod schema;
pub mod summary;

pub use compute::{compute_saved, ComputeRow, COMPUTE_FILE};
pub use gains::{seed_gains, GainRow, GAINS_FILE};
pub use schema::{
    read_rows, write_rows, CurveRow, ResultsError, Strategy, StrategyColumns, SummaryRow, TaskRow,
    CURVES_FILE, SUMMARY_FILE, TASKS_FILE,
};
pub use summary::summarize;
