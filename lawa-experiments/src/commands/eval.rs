//! `lawa eval`: mean next-token loss of a checkpoint over every window of a dataset split.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lawa_core::data::{Dataset, Split, ValidationWindows};
use lawa_models::{CausalLm, Model, Precision};
use serde::Serialize;
use tch::{nn, Device};

use crate::train::evaluate::evaluate;

/// What to evaluate, on what.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A checkpoint folder (config.json + model.safetensors) or a .safetensors file with
    /// config.json beside it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A dataset folder made by `lawa prepare` (or nanoGPT's train.bin / val.bin).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split to score.
    #[arg(long, default_value = "val")]
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

/// Runs `lawa eval`.
pub fn run(args: &EvalArgs) -> Result<EvalReport> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let data = Dataset::open(&args.data)?;
    let device = Device::cuda_if_available();
    let vs = nn::VarStore::new(device);
    let mut model = Model::from_pretrained(vs.root(), &args.checkpoint)?;
    model.set_precision(args.precision);
    let vocab = data.meta().vocab_size as usize;
    if vocab > model.vocab_size() {
        bail!(
            "{}: vocabulary of {vocab} tokens ({}) exceeds the model's vocab_size {} ({})",
            args.data.display(),
            data.meta().tokenizer,
            model.vocab_size(),
            args.checkpoint.display()
        );
    }
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
            args.data.display()
        )
    })?;
    Ok(EvalReport {
        checkpoint: args.checkpoint.display().to_string(),
        data: args.data.display().to_string(),
        split: args.split.name().to_string(),
        loss: losses.mean,
        perplexity: losses.mean.exp(),
        loss_se: losses.se(),
        windows: windows.len(),
        block_size,
        tokens: losses.tokens,
    })
}
