//! `lawa sweep <file>`: the main job, a grid of training runs and averagers; re-running resumes.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::train::resolve_config;
use crate::sweep::{self, Shard, SweepOptions, SweepReport};

/// The sweep file, and how to divide its runs between processes.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// A sweep YAML file (a path that does not exist, such as `lr.yaml` or `paper/small.yaml`,
    /// is looked up in configs/).
    pub config: PathBuf,
    /// Train only share I of N of the runs (e.g. `--shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT`)
    /// and gather nothing; a final `lawa sweep` without it gathers and draws.
    #[arg(long, value_name = "I/N", conflicts_with = "devices")]
    pub shard: Option<Shard>,
    /// Train several runs at once, one process per device (e.g. `cuda:0,cuda:1`), then gather.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Internal: one worker of `--devices`.
    #[arg(long, hide = true, value_name = "DEVICE", conflicts_with_all = ["devices", "shard"])]
    pub worker: Option<String>,
}

/// Runs `lawa sweep`.
pub fn run(args: &SweepArgs) -> Result<SweepReport> {
    let options = SweepOptions {
        shard: args.shard,
        devices: args.devices.clone(),
        worker: args.worker.clone(),
    };
    sweep::run_with(&resolve_config(&args.config), &options)
}
