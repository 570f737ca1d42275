//! `lawa train <run.yaml>`: train one model, evaluating every configured averager; re-running
//! resumes from the last checkpoint, and a finished run is not redone.

use std::path::PathBuf;

use anyhow::Result;

use crate::train::{train, RunConfig, RunOutcome};

/// The run file.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// A run YAML file (a bare name is looked up in configs/).
    pub config: PathBuf,
}

/// A config path as given, or `configs/<name>[.yaml]` for a bare name.
pub fn resolve_config(path: &std::path::Path) -> PathBuf {
    if path.exists() || path.components().count() > 1 {
        return path.to_owned();
    }
    let in_configs = PathBuf::from("configs").join(path);
    if in_configs.exists() {
        return in_configs;
    }
    let with_ext = in_configs.with_extension("yaml");
    if with_ext.exists() {
        with_ext
    } else {
        path.to_owned()
    }
}

/// Runs `lawa train`.
pub fn run(args: &TrainArgs) -> Result<RunOutcome> {
    let plan = RunConfig::load(&resolve_config(&args.config))?;
    let outcome = train(&plan, |_, _| {})?;
    tracing::info!(
        "{}: {:?} at step {}, final raw val loss {:.4}; results in {}",
        plan.config.name,
        outcome.status,
        outcome.step,
        outcome.final_val_loss,
        plan.dir.display()
    );
    Ok(outcome)
}
