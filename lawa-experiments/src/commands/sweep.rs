//! `lawa sweep <file>`: the main job, a grid of training runs and averagers; re-running resumes.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::train::resolve_config;
use crate::sweep::{self, SweepReport};

/// The sweep file.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// A sweep YAML file (a bare name such as `lr.yaml` is looked up in configs/).
    pub config: PathBuf,
}

/// Runs `lawa sweep`.
pub fn run(args: &SweepArgs) -> Result<SweepReport> {
    sweep::run(&resolve_config(&args.config))
}
