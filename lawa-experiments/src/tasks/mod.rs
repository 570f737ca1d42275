//! Zero-shot downstream tasks, scored as lm-evaluation-harness scores them (the paper's
//! Table 2): task files ([`mod@format`]) turned into log-likelihood requests and metrics
//! ([`mod@score`]).

pub mod format;
pub mod score;

use anyhow::{Context, Result};
use lawa_models::CausalLm;

pub use format::{read_examples, Example, Layout, TaskSpec};
pub use score::{encode_pair, metrics, requests_of, score, Request, Scored, TaskResult};

use crate::prepare::tokenizer::TextTokenizer;

/// Scores one task file with `model` and its tokenizer, `batch` requests at a time, inputs cut
/// to `max_length` tokens.
pub fn run_task(
    spec: &TaskSpec,
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    batch: usize,
    max_length: usize,
) -> Result<TaskResult> {
    let examples = read_examples(spec)?;
    let requests = requests_of(tokenizer, &spec.path, &examples, max_length)?;
    let scored = score(model, &requests, batch, max_length)
        .with_context(|| format!("{}: scoring", spec.path.display()))?;
    Ok(metrics(&spec.name, &examples, &scored))
}
