//! lawa's experiment harness as a library, with the `lawa` command line as a thin layer on top:
//!
//! - [`prepare`]: a text corpus into a tokenized dataset folder;
//! - [`train`]: one training run, every averager evaluated along the way, resumable;
//! - [`sweep`]: grids of runs gathered into a results folder;
//! - [`posthoc`]: LAWA over a series of saved checkpoints (Pythia's, or a run's);
//! - [`results`]: the CSV schema, summaries and metrics (no libtorch);
//! - [`figures`]: the paper's figures from a results folder (no libtorch);
//! - [`tasks`]: zero-shot downstream tasks scored as lm-evaluation-harness scores them;
//! - [`commands`]: one module per subcommand, each parsing arguments and calling the above.

pub mod assets;
pub mod bench;
pub mod commands;
pub mod figures;
pub mod posthoc;
pub mod prepare;
pub mod progress;
pub mod results;
pub mod sweep;
pub mod tasks;
pub mod torch_panic;
pub mod train;
pub mod vocabulary;
