//! Training a GPT-2 while evaluating every averager along the way: the run config and its
//! averagers, the run folder, the loop and its gradient pass, evaluation, the run's CSV, resumable checkpoints and
//! the status written at the end.

pub mod averagers;
pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod distributed;
pub mod evaluate;
pub mod gradients;
pub mod memory;
pub mod run_dir;
pub mod status;
pub mod trainer;

pub use averagers::{AveragerSpec, SwaStart};
pub use config::{RunConfig, RunPlan};
pub use distributed::DataParallel;
pub use status::{RunOutcome, RunStatus};
pub use trainer::{train, train_with, Trainer};
