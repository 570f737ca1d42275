//! `lawa posthoc <study.yaml>`: LAWA over a series of saved checkpoints (Pythia's revisions, or a
//! lawa run's series), scored along training; re-running continues.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::train::resolve_config;
use crate::posthoc::{self, PosthocReport};

/// The study file.
#[derive(Debug, Clone, clap::Args)]
pub struct PosthocArgs {
    /// A post-hoc study YAML file (a path that does not exist is looked up in configs/).
    pub config: PathBuf,
}

/// Runs `lawa posthoc`.
pub fn run(args: &PosthocArgs) -> Result<PosthocReport> {
    posthoc::run(&resolve_config(&args.config))
}
