//! Training a GPT-2 while evaluating every averager along the way: the run config, the loop,
//! evaluation, the tidy CSV and resumable checkpoints.

pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod evaluate;
pub mod trainer;

pub use config::RunConfig;
pub use trainer::{train, RunOutcome, RunStatus};
