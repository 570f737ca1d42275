//! `lawa eval`: mean next-token loss of a checkpoint (GPT-2 or GPT-NeoX) over every window of a
//! dataset split, or its zero-shot accuracy on task files, scored as lm-evaluation-harness
//! scores them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lawa_core::data::{Dataset, Split, ValidationWindows};
use lawa_models::{CausalLm, Model, Precision};
use serde::Serialize;
use tch::{nn, Device};

use crate::prepare::tokenizer::TokenizerSpec;
use crate::tasks::{run_task, TaskResult, TaskSpec};
use crate::train::evaluate::evaluate;

/// What to evaluate, on what.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A checkpoint folder (config.json beside model.safetensors, safetensors shards or
    /// pytorch_model.bin) or a weights file with config.json beside it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A dataset folder made by `lawa prepare` (or nanoGPT's train.bin / val.bin): scored for
    /// its loss, or, with --task, the source of the tokenizer.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A task file to score instead of the loss, `[layout:]file.jsonl` (layouts: lawa,
    /// hellaswag, piqa, arc, winogrande, sciq, lambada); repeat for several.
    #[arg(long = "task")]
    pub tasks: Vec<TaskSpec>,
    /// With --task and without --data: the model's tokenizer (`gpt2`, `byte`, or a
    /// tokenizer.json) [default: the one a lawa checkpoint names, when `gpt2` or `byte`].
    #[arg(long, conflicts_with = "data", requires = "tasks")]
    pub tokenizer: Option<TokenizerSpec>,
    /// Which split to score for the loss (not with --task).
    #[arg(long, default_value = "val", conflicts_with = "tasks")]
    pub split: Split,
    /// Window length in tokens [default: the model's block size].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Compute precision: f32, or bf16 matmuls over fp32 weights.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The checkpoint scored.
    pub checkpoint: String,
    /// The dataset folder.
    pub data: String,
    /// `train` or `val`.
    pub split: String,
    /// Mean next-token cross-entropy (nats per token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Standard error of the loss over windows.
    pub loss_se: Option<f64>,
    /// Number of windows scored.
    pub windows: usize,
    /// Tokens per window.
    pub block_size: usize,
    /// Predictions scored (`windows * block_size`).
    pub tokens: u64,
}

impl EvalReport {
    /// The report as printed: JSON, or one line of text.
    pub fn render(&self, json: bool) -> String {
        if json {
            // Strings and numbers only: serde_json cannot fail on them.
            serde_json::to_string(self).expect("the report serializes")
        } else {
            format!(
                "{} loss {:.4}{} (perplexity {:.2}) over {} windows of {} tokens ({} predictions)",
                self.split,
                self.loss,
                self.loss_se
                    .map(|se| format!(" ± {se:.4}"))
                    .unwrap_or_default(),
                self.perplexity,
                self.windows,
                self.block_size,
                self.tokens
            )
        }
    }
}

/// What `lawa eval` reports: a loss, or task scores.
#[derive(Debug, Clone)]
pub enum EvalOutput {
    /// The loss over a split.
    Loss(EvalReport),
    /// Zero-shot task scores.
    Tasks(Vec<TaskResult>),
}

impl EvalOutput {
    /// The report as printed: JSON, or lines of text.
    pub fn render(&self, json: bool) -> String {
        match self {
            EvalOutput::Loss(r) => r.render(json),
            EvalOutput::Tasks(results) if json => {
                // Strings and numbers only: serde_json cannot fail on them.
                serde_json::to_string(results).expect("the report serializes")
            }
            EvalOutput::Tasks(results) => results
                .iter()
                .map(|r| {
                    let mut line = format!(
                        "{}: {} examples, acc {:.4} ± {:.4}",
                        r.task, r.examples, r.acc, r.acc_se
                    );
                    if let (Some(n), Some(se)) = (r.acc_norm, r.acc_norm_se) {
                        line.push_str(&format!(", acc_norm {n:.4} ± {se:.4}"));
                    }
                    if let Some(p) = r.perplexity {
                        line.push_str(&format!(", perplexity {p:.3}"));
                    }
                    line
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Runs `lawa eval`.
pub fn run(args: &EvalArgs) -> Result<EvalOutput> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !args.tasks.is_empty() {
        return run_tasks(args).map(EvalOutput::Tasks);
    }
    let Some(data_dir) = &args.data else {
        bail!("give --data (a dataset to score the loss on) or --task (a task file)");
    };
    run_loss(args, data_dir).map(EvalOutput::Loss)
}

/// Scores every task file of `args`.
fn run_tasks(args: &EvalArgs) -> Result<Vec<TaskResult>> {
    let mut tasks = args.tasks.clone();
    crate::tasks::format::name_apart(&mut tasks).map_err(|e| anyhow::anyhow!("--task: {e}"))?;
    for t in &tasks {
        crate::tasks::format::check(&t.path)?;
    }
    let (data, spec) = (args.data.as_deref(), args.tokenizer.as_ref());
    let Some(tokenizer) = crate::vocabulary::tokenizer_for(&args.checkpoint, data, spec)? else {
        bail!("--task needs the model's tokenizer: give --data or --tokenizer");
    };
    let vs = nn::VarStore::new(Device::cuda_if_available());
    let mut model = Model::from_pretrained(vs.root(), &args.checkpoint)?;
    model.set_precision(args.precision);
    if tokenizer.vocab_size() as usize > model.vocab_size() {
        bail!(
            "the tokenizer has {} tokens, the model {}: not the model's tokenizer",
            tokenizer.vocab_size(),
            model.vocab_size()
        );
    }
    let max_length = args
        .block_size
        .unwrap_or(model.max_positions())
        .min(model.max_positions());
    tasks
        .iter()
        .map(|t| run_task(t, &model, &tokenizer, args.batch_size, max_length))
        .collect()
}

fn run_loss(args: &EvalArgs, data_dir: &std::path::Path) -> Result<EvalReport> {
    let data = Dataset::open(data_dir)?;
    let device = Device::cuda_if_available();
    let vs = nn::VarStore::new(device);
    let mut model = Model::from_pretrained(vs.root(), &args.checkpoint)?;
    model.set_precision(args.precision);
    let config = lawa_models::hf::CheckpointFiles::locate(&args.checkpoint)?.config;
    crate::vocabulary::ensure_checkpoints_fit(data_dir, data.meta(), &[config], model.vocab_size())
        .with_context(|| format!("{}", args.checkpoint.display()))?;
    let block_size = args.block_size.unwrap_or(model.max_positions());
    if block_size > model.max_positions() {
        bail!(
            "--block-size {block_size} exceeds the model's block size {}",
            model.max_positions()
        );
    }
    let windows = ValidationWindows::contiguous(data.split(args.split), block_size)?;
    let losses = evaluate(&model, &windows, args.batch_size).with_context(|| {
        format!(
            "evaluating {} on {}",
            args.checkpoint.display(),
            data_dir.display()
        )
    })?;
    Ok(EvalReport {
        checkpoint: args.checkpoint.display().to_string(),
        data: data_dir.display().to_string(),
        split: args.split.name().to_string(),
        loss: losses.mean,
        perplexity: losses.mean.exp(),
        loss_se: losses.se(),
        windows: windows.len(),
        block_size,
        tokens: losses.tokens,
    })
}
