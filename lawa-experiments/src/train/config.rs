//! A training run as written in YAML (`lawa train run.yaml`): data, model, recipe, evaluation,
//! checkpoints and the averagers to evaluate along the way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::averaging::{AveragerSpec, Storage};
use lawa_core::optim::{AdamWConfig, Schedule};
use lawa_models::{GptConfig, Precision};
use serde::{Deserialize, Serialize};

/// One training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name (the run folder's default name, and the `run` column of the CSVs).
    pub name: String,
    /// Dataset folder (`lawa prepare` output or a nanoGPT preparation).
    pub data: PathBuf,
    /// The model.
    pub model: ModelSpec,
    /// The recipe.
    pub train: TrainSpec,
    /// Evaluation.
    pub eval: EvalSpec,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Averagers evaluated along the run (never changing training).
    #[serde(default)]
    pub averagers: Vec<AveragerSpec>,
    /// Where averagers keep snapshots: `training` (the training device) or `cpu`.
    #[serde(default)]
    pub averager_storage: Storage,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Run folder [default: runs/NAME].
    #[serde(default)]
    pub out: Option<PathBuf>,
}

fn default_device() -> String {
    "auto".into()
}

/// The model: a preset, a custom shape, or a preset with overrides. The vocabulary comes from
/// the dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `tiny`, `small`, `medium` or `large`.
    #[serde(default)]
    pub preset: Option<String>,
    /// Blocks.
    #[serde(default)]
    pub n_layer: Option<usize>,
    /// Heads.
    #[serde(default)]
    pub n_head: Option<usize>,
    /// Width.
    #[serde(default)]
    pub n_embd: Option<usize>,
    /// Longest sequence [default: the preset's, else the training block size].
    #[serde(default)]
    pub block_size: Option<usize>,
    /// Biases [default: true].
    #[serde(default)]
    pub bias: Option<bool>,
    /// Dropout [default: 0].
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Divide attention logits of block i by i + 1 (the authors' option).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
}

/// The training recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub block_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// AdamW hyperparameters.
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Gradient-norm clipping threshold (0: off).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Seed of the initialization, the batch order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32` or `bf16`.
    #[serde(default = "default_device")]
    pub precision: String,
}

fn one() -> usize {
    1
}

fn default_clip() -> f64 {
    1.0
}

/// Evaluation along the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Evaluate every this many steps (and at the end).
    pub every: u64,
    /// Fixed validation windows scored at each evaluation.
    pub windows: usize,
    /// Fixed training windows scored too, for the generalization gap (0: none).
    #[serde(default)]
    pub train_windows: usize,
    /// Windows per forward pass [default: the training batch size].
    #[serde(default)]
    pub batch_size: Option<usize>,
}

/// Checkpointing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Write a checkpoint every this many steps [default: at each evaluation]; always at the end.
    #[serde(default)]
    pub every: Option<u64>,
}

impl RunConfig {
    /// Reads a YAML run file; errors name the file and the offending field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let cfg: RunConfig =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        Ok(cfg)
    }

    /// The run folder.
    pub fn out_dir(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&self.name))
    }

    /// Checks every value that does not depend on the dataset.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let positive = [
            ("train.steps", t.steps as f64),
            ("train.batch_size", t.batch_size as f64),
            ("train.block_size", t.block_size as f64),
            ("train.grad_accum", t.grad_accum as f64),
            ("eval.every", self.eval.every as f64),
            ("eval.windows", self.eval.windows as f64),
        ];
        for (field, value) in positive {
            if value <= 0.0 {
                bail!("{field} = {value} is invalid: must be at least 1");
            }
        }
        if self.name.is_empty() || self.name.contains(['/', ',', '"']) {
            bail!(
                "name = {:?} is invalid: a non-empty name without '/', ',' or '\"'",
                self.name
            );
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr = {} is invalid: must be positive", t.lr);
        }
        if t.grad_clip.is_nan() || t.grad_clip < 0.0 {
            bail!(
                "train.grad_clip = {} is invalid: must be 0 (off) or positive",
                t.grad_clip
            );
        }
        if self.eval.batch_size == Some(0) {
            bail!("eval.batch_size = 0 is invalid: must be at least 1");
        }
        if self.checkpoint.every == Some(0) {
            bail!("checkpoint.every = 0 is invalid: must be at least 1");
        }
        t.schedule
            .validate(t.lr, t.steps)
            .map_err(|e| anyhow::anyhow!("train.{e}"))?;
        self.precision()?;
        self.device()?;
        // The model's shape and options (its vocabulary comes from the dataset later).
        self.model_config(1)?;
        let mut labels = Vec::new();
        for (i, spec) in self.averagers.iter().enumerate() {
            let averager = spec
                .build(Some(t.steps))
                .map_err(|e| anyhow::anyhow!("averagers[{i}]: {e}"))?;
            let label = averager.label();
            if labels.contains(&label) {
                bail!("averagers[{i}]: duplicate averager {label}");
            }
            labels.push(label);
        }
        Ok(())
    }

    /// The device to train on.
    pub fn device(&self) -> Result<tch::Device> {
        Ok(match self.device.as_str() {
            "auto" => tch::Device::cuda_if_available(),
            "cpu" => tch::Device::Cpu,
            "cuda" => tch::Device::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => tch::Device::Cuda(n),
                None => bail!("device = {other:?} is invalid: expected auto, cpu, cuda or cuda:N"),
            },
        })
    }

    /// The compute precision.
    pub fn precision(&self) -> Result<Precision> {
        match self.train.precision.as_str() {
            "auto" => Ok(if self.device()?.is_cuda() {
                Precision::Bf16
            } else {
                Precision::F32
            }),
            other => other
                .parse()
                .map_err(|e| anyhow::anyhow!("train.precision = {other:?} is invalid: {e}")),
        }
    }

    /// The model's configuration for a vocabulary of `vocab_size` tokens.
    pub fn model_config(&self, vocab_size: usize) -> Result<GptConfig> {
        let m = &self.model;
        let mut cfg = match &m.preset {
            Some(name) => GptConfig::preset(name, vocab_size)
                .map_err(|e| anyhow::anyhow!("model.preset: {e}"))?,
            None => {
                let need = |field: &str, v: Option<usize>| {
                    v.ok_or_else(|| anyhow::anyhow!("model.{field} is required without a preset"))
                };
                GptConfig {
                    n_layer: need("n_layer", m.n_layer)?,
                    n_head: need("n_head", m.n_head)?,
                    n_embd: need("n_embd", m.n_embd)?,
                    block_size: m.block_size.unwrap_or(self.train.block_size),
                    vocab_size,
                    bias: true,
                    dropout: 0.0,
                    scale_attn_by_inverse_layer_idx: false,
                    vocab_multiple: 64,
                }
            }
        };
        if let Some(v) = m.n_layer {
            cfg.n_layer = v;
        }
        if let Some(v) = m.n_head {
            cfg.n_head = v;
        }
        if let Some(v) = m.n_embd {
            cfg.n_embd = v;
        }
        if let Some(v) = m.block_size {
            cfg.block_size = v;
        }
        if let Some(v) = m.bias {
            cfg.bias = v;
        }
        if let Some(v) = m.dropout {
            cfg.dropout = v;
        }
        if let Some(v) = m.scale_attn_by_inverse_layer_idx {
            cfg.scale_attn_by_inverse_layer_idx = v;
        }
        cfg.validate().map_err(|e| anyhow::anyhow!("model: {e}"))?;
        if self.train.block_size > cfg.block_size {
            bail!(
                "train.block_size = {} is invalid: longer than the model's block size {}",
                self.train.block_size,
                cfg.block_size
            );
        }
        Ok(cfg)
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> u64 {
        (self.train.batch_size * self.train.block_size * self.train.grad_accum) as u64
    }
}
