//! A training run as written in YAML (`lawa train run.yaml`): data, model, recipe, evaluation,
//! checkpoints and the averagers to evaluate along the way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::averaging::Storage;
use lawa_core::optim::{AdamWConfig, Schedule};
use lawa_models::{GptConfig, Kernel, LossPlan, Precision};
use serde::{Deserialize, Serialize};

use super::averagers::AveragerSpec;
use super::gradients::GradientRecipe;

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
    /// A name for the model in run ids and CSVs [default: the preset and any overrides, e.g.
    /// `tiny`, `small-invattn`, `custom-l4-h4-d256`].
    #[serde(default)]
    pub name: Option<String>,
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

impl ModelSpec {
    /// The model's name in run ids and CSVs: `name`, else the preset followed by each override
    /// (`l` layers, `h` heads, `d` width, `b` block size, `nobias`/`bias`, `drop`, `invattn`),
    /// so that two different models of a sweep never share a name.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let mut parts = vec![self.preset.clone().unwrap_or_else(|| "custom".into())];
        let overrides = [
            self.n_layer.map(|v| format!("l{v}")),
            self.n_head.map(|v| format!("h{v}")),
            self.n_embd.map(|v| format!("d{v}")),
            self.block_size.map(|v| format!("b{v}")),
            self.bias
                .map(|v| if v { "bias" } else { "nobias" }.to_string()),
            self.dropout.map(|v| format!("drop{v}")),
            self.scale_attn_by_inverse_layer_idx
                .map(|v| if v { "invattn" } else { "noinvattn" }.to_string()),
        ];
        parts.extend(overrides.into_iter().flatten());
        parts.join("-")
    }
}

/// The training recipe: one run's (`TrainSpec`, its parameters left at their defaults), or a
/// sweep's, whose grid sets the learning rate and the seed of each run
/// ([`TrainRecipe`](crate::sweep::config::TrainRecipe): `Lr` and `Seed` are [`SetByGrid`], the schedule
/// a [`ScheduleRecipe`](crate::sweep::config::ScheduleRecipe)). One definition serves both, so an option
/// of the training step that a run takes, a sweep takes too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(
        serialize = "S: Serialize, Lr: Serialize + GridValue, Seed: Serialize + GridValue",
        deserialize = "S: Deserialize<'de>, Lr: Deserialize<'de>, Seed: Deserialize<'de> + Default"
    )
)]
pub struct TrainSpec<S = Schedule, Lr = f64, Seed = u64> {
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
    #[serde(skip_serializing_if = "GridValue::set_by_grid")]
    pub lr: Lr,
    /// Learning-rate schedule (in a sweep's recipe, its final rate written as `min_lr_ratio`,
    /// a fraction of each run's peak).
    pub schedule: S,
    /// Length of the schedule, when the run stops before its end: a run of `steps` steps that is
    /// the start of a `horizon`-step schedule (the paper's early-training regime: the first
    /// steps of a long cosine, the learning rate still near its peak) [default: `steps`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<u64>,
    /// AdamW hyperparameters.
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Gradient-norm clipping threshold (0: off).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Seed of the initialization, the batch order and dropout.
    #[serde(default, skip_serializing_if = "GridValue::set_by_grid")]
    pub seed: Seed,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32` or `bf16`.
    #[serde(default = "default_device")]
    pub precision: String,
    /// In a data-parallel run, average gradients across ranks in fp32 instead of in their own
    /// dtype. lawa's GPT-2 keeps fp32 master weights (bf16 is a compute precision), so its
    /// gradients are fp32 already and this changes nothing for it; it matters for bf16 variables.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allreduce_fp32: bool,
    /// Run the LM head and the loss this many tokens at a time, so that only one chunk's
    /// logits exist at once (memory for a larger micro-batch with a 50K vocabulary); the same
    /// loss and gradients up to summation order [default: the whole micro-batch at once].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_chunk: Option<usize>,
    /// What computes the softmax and loss: `aten` (libtorch's ops over the logits cast to fp32,
    /// as PyTorch eager) or `fused` (lawa's cross-entropy kernels over the logits in their own
    /// dtype, on CUDA) [default: aten].
    #[serde(default, skip_serializing_if = "Kernel::is_default")]
    pub loss_kernel: Kernel,
    /// What computes GPT-2's residual adds and the LayerNorms after them: `aten` (libtorch's
    /// ops) or `fused` (lawa's kernels: each add, its LayerNorm and the cast in one pass, on
    /// CUDA) [default: aten].
    #[serde(default, skip_serializing_if = "Kernel::is_default")]
    pub norm_kernel: Kernel,
    /// What computes GPT-2's linear layers: `aten` (libtorch's `linear`) or `fused` (the same
    /// ops, each bias gradient summed by lawa's kernel, on CUDA) [default: aten].
    #[serde(default, skip_serializing_if = "Kernel::is_default")]
    pub linear_kernel: Kernel,
    /// Record each step's forward and backward passes (every micro-batch) and the gradient
    /// clipping as a CUDA graph after the first few steps, and replay it from then on: one
    /// launch instead of thousands a step. CUDA only; not with dropout, nor over several ranks
    /// [default: false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cuda_graph: bool,
}

fn one() -> usize {
    1
}

/// The learning rate or seed of a sweep's recipe: not written there, since the grid (`lrs`,
/// `seeds`) sets it for each run. Writing one anyway is an error that says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetByGrid;

impl<'de> Deserialize<'de> for SetByGrid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Absent;
        impl<'de> serde::de::Visitor<'de> for Absent {
            type Value = SetByGrid;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("nothing: a sweep's grid sets it (`lrs:` and `seeds:`)")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<SetByGrid, E> {
                Ok(SetByGrid)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<SetByGrid, E> {
                Ok(SetByGrid)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, _: D) -> Result<SetByGrid, D::Error> {
                Err(serde::de::Error::custom(
                    "a sweep's grid sets each run's `lr` and `seed`: list the learning rates \
                     under `lrs:` and the seeds under `seeds:`, not in `train:`",
                ))
            }
        }
        // A missing field reaches here as `None` (serde asks an absent field for an option).
        deserializer.deserialize_option(Absent)
    }
}

impl Serialize for SetByGrid {
    fn serialize<Se: serde::Serializer>(&self, serializer: Se) -> Result<Se::Ok, Se::Error> {
        serializer.serialize_none()
    }
}

/// A value of the recipe that a run writes and a sweep's grid may set instead.
pub trait GridValue {
    /// Whether the grid sets it (then it is not written).
    fn set_by_grid(&self) -> bool {
        false
    }
}

impl GridValue for f64 {}
impl GridValue for u64 {}
impl GridValue for SetByGrid {
    fn set_by_grid(&self) -> bool {
        true
    }
}

impl<S, Lr, Seed> TrainSpec<S, Lr, Seed> {
    /// Steps the learning-rate schedule spans: the horizon, or the run's steps.
    pub fn schedule_steps(&self) -> u64 {
        self.horizon.unwrap_or(self.steps)
    }

    /// The same recipe with another learning rate, schedule and seed, every other option kept:
    /// how a sweep's recipe becomes each run's.
    pub fn with_run<S2, Lr2, Seed2>(
        &self,
        lr: Lr2,
        schedule: S2,
        seed: Seed2,
    ) -> TrainSpec<S2, Lr2, Seed2> {
        TrainSpec {
            steps: self.steps,
            batch_size: self.batch_size,
            block_size: self.block_size,
            grad_accum: self.grad_accum,
            lr,
            schedule,
            horizon: self.horizon,
            adamw: self.adamw,
            grad_clip: self.grad_clip,
            seed,
            precision: self.precision.clone(),
            allreduce_fp32: self.allreduce_fp32,
            loss_chunk: self.loss_chunk,
            loss_kernel: self.loss_kernel,
            norm_kernel: self.norm_kernel,
            linear_kernel: self.linear_kernel,
            cuda_graph: self.cuda_graph,
        }
    }
}

impl TrainSpec {
    /// How each micro-batch's loss is computed.
    pub fn loss_plan(&self) -> LossPlan {
        LossPlan {
            chunk: self.loss_chunk,
            kernel: self.loss_kernel,
        }
    }

    /// How each step's gradients are computed.
    pub fn gradient_recipe(&self) -> GradientRecipe {
        GradientRecipe {
            accumulation: self.grad_accum,
            clip: self.grad_clip,
            loss: self.loss_plan(),
        }
    }

    /// The learning rate of optimizer step `it` (0 for the first).
    pub fn lr_at(&self, it: u64) -> f64 {
        self.schedule.lr(it, self.lr, self.schedule_steps())
    }
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
    /// Also keep the model alone, as a Hugging Face checkpoint, in `series/step<N>/` every this
    /// many steps: a checkpoint series for `lawa posthoc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_every: Option<u64>,
}

impl RunConfig {
    /// Reads a YAML run file and plans the run; errors name the file and the offending field.
    pub fn load(path: &Path) -> Result<RunPlan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let cfg: RunConfig =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.plan()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// Checks every value that does not depend on the dataset, once, and resolves the device,
    /// precision and run folder: what [`train`](super::train) takes.
    pub fn plan(self) -> Result<RunPlan> {
        self.validate()?;
        Ok(RunPlan {
            device: self.device()?,
            precision: self.precision()?,
            dir: self.out_dir(),
            config: self,
        })
    }

    /// The run folder.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| self.default_out_dir())
    }

    /// The run folder when `out` is not given: `runs/NAME`.
    pub fn default_out_dir(&self) -> PathBuf {
        PathBuf::from("runs").join(&self.name)
    }

    /// Checks every value that does not depend on the dataset.
    fn validate(&self) -> Result<()> {
        let t = &self.train;
        let positive = [
            ("train.steps", t.steps as f64),
            ("train.batch_size", t.batch_size as f64),
            ("train.block_size", t.block_size as f64),
            ("train.grad_accum", t.grad_accum as f64),
            ("train.loss_chunk", t.loss_chunk.unwrap_or(1) as f64),
            ("eval.every", self.eval.every as f64),
            ("eval.windows", self.eval.windows as f64),
        ];
        for (field, value) in positive {
            if value <= 0.0 {
                bail!("{field} = {value} is invalid: must be at least 1");
            }
        }
        if t.batch_size
            .checked_mul(t.block_size)
            .and_then(|n| n.checked_mul(t.grad_accum))
            .is_none_or(|n| n > i64::MAX as usize)
        {
            bail!(
                "train.batch_size × block_size × grad_accum = {} × {} × {} tokens per step is too large to count",
                t.batch_size,
                t.block_size,
                t.grad_accum
            );
        }
        let per_step = (t.batch_size * t.block_size * t.grad_accum) as u64;
        if t.steps.checked_mul(per_step).is_none() {
            bail!(
                "train.steps = {} is invalid: {} steps of {per_step} tokens are more tokens than \
                 a run can count (2^64)",
                t.steps,
                t.steps
            );
        }
        check_name("name", &self.name)?;
        if let Some(name) = &self.model.name {
            check_name("model.name", name)?;
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
        if self.checkpoint.series_every == Some(0) {
            bail!("checkpoint.series_every = 0 is invalid: must be at least 1");
        }
        if let Some(h) = t.horizon {
            if h < t.steps {
                bail!(
                    "train.horizon = {h} is invalid: the schedule must last at least the run's {} steps",
                    t.steps
                );
            }
        }
        t.schedule
            .validate(t.lr, t.schedule_steps())
            .map_err(|e| anyhow::anyhow!("train.{e}"))?;
        t.adamw.validate().map_err(|e| {
            anyhow::anyhow!(
                "train.adamw.{}",
                e.to_string().trim_start_matches("adamw: ")
            )
        })?;
        self.precision()?;
        self.device()?;
        // The model's shape and options (its vocabulary comes from the dataset later).
        let model = self.model_config(1)?;
        if t.cuda_graph {
            self.check_cuda_graph(model.dropout)?;
        }
        let mut labels = Vec::new();
        for (i, spec) in self.averagers.iter().enumerate() {
            let averager = spec
                .build(t.steps, self.averager_storage)
                .map_err(|e| anyhow::anyhow!("averagers[{i}]: {e}"))?;
            let label = averager.label();
            if labels.contains(&label) {
                bail!("averagers[{i}]: duplicate averager {label}");
            }
            labels.push(label);
        }
        Ok(())
    }

    /// Refuses `train.cuda_graph` where it cannot be used.
    fn check_cuda_graph(&self, dropout: f64) -> Result<()> {
        if dropout > 0.0 {
            bail!(
                "train.cuda_graph = true is not supported with model.dropout = {dropout} (the \
                 dropout masks of replayed steps have not been checked against eager ones)"
            );
        }
        let device = self.device()?;
        if !device.is_cuda() {
            bail!("train.cuda_graph = true needs a CUDA device; this run's device is {device:?}");
        }
        if !lawa_ops::cuda_graphs_built() {
            bail!(
                "train.cuda_graph = true: this build of lawa has no CUDA graphs (the CUDA headers \
                 were not found when it was built: run scripts/bootstrap.sh, then rebuild)"
            );
        }
        Ok(())
    }

    /// The device to train on.
    pub fn device(&self) -> Result<tch::Device> {
        parse_device(&self.device)
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

    /// Steps between checkpoints: `checkpoint.every`, else `eval.every`.
    pub fn checkpoint_every(&self) -> u64 {
        self.checkpoint.every.unwrap_or(self.eval.every)
    }

    /// The step of the run's first checkpoint (its last step, if that comes first).
    pub fn first_checkpoint_step(&self) -> u64 {
        self.checkpoint_every().min(self.train.steps)
    }
}

/// A run name or model name: it names a folder and a CSV value, so no path separators, no
/// control characters (a newline would break a CSV line), and not `.` or `..`.
pub(crate) fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        bail!(
            "{field} = {name:?} is invalid: a name needs at least one character, no '/', '\\' or control characters, and is not '.' or '..'"
        );
    }
    Ok(())
}

/// A run whose config has been checked: what [`train`](super::train) runs.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// The config as written.
    pub config: RunConfig,
    /// The device to train on.
    pub device: tch::Device,
    /// The compute precision.
    pub precision: Precision,
    /// The run folder.
    pub dir: PathBuf,
}

/// A device as written in a config: `auto` (CUDA when this machine has it), `cpu`, `cuda` or
/// `cuda:N`. Whether the machine has that device is checked by [`ensure_available`], when the
/// run is about to start.
pub fn parse_device(text: &str) -> Result<tch::Device> {
    Ok(match text {
        "auto" => tch::Device::cuda_if_available(),
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => tch::Device::Cuda(n),
            None => bail!("device = {other:?} is invalid: expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// Refuses a CUDA device this machine does not have, with one line, before anything is written
/// (libtorch would abort on it later).
pub fn ensure_available(device: tch::Device) -> Result<()> {
    let tch::Device::Cuda(index) = device else {
        return Ok(());
    };
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    };
    if index >= count {
        bail!(
            "device = cuda:{index}: this machine has {} CUDA device{}; use `device: cpu` or `auto`",
            if count == 0 {
                "no".to_string()
            } else {
                count.to_string()
            },
            if count == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(train: &str) -> Result<RunPlan> {
        let yaml = format!(
            "name: h\ndata: d\nmodel: {{preset: tiny}}\ntrain: {train}\neval: {{every: 10, windows: 4}}\ndevice: cpu\n"
        );
        serde_yaml::from_str::<RunConfig>(&yaml)?.plan()
    }

    #[test]
    fn a_horizon_makes_a_run_the_start_of_a_longer_schedule() {
        let plan = run("{steps: 100, batch_size: 2, block_size: 8, lr: 1.0, horizon: 1000, schedule: {kind: cosine, warmup: 10, min_lr: 0.1}}").unwrap();
        let t = &plan.config.train;
        assert_eq!(t.schedule_steps(), 1000);
        assert_eq!(t.lr_at(5), 0.5, "warm-up as usual");
        assert_eq!(t.lr_at(10), 1.0);
        // Step 99 of a cosine from step 10 to 1000: 0.1 + 0.45 (1 + cos(pi 89 / 990)).
        let expected = 0.1 + 0.45 * (1.0 + (std::f64::consts::PI * 89.0 / 990.0).cos());
        assert!((t.lr_at(99) - expected).abs() < 1e-15);
        assert!(t.lr_at(99) > 0.98, "still near the peak: {}", t.lr_at(99));
        // Without a horizon the same step is at the end of the decay.
        let short = run("{steps: 100, batch_size: 2, block_size: 8, lr: 1.0, schedule: {kind: cosine, warmup: 10, min_lr: 0.1}}").unwrap();
        assert!((short.config.train.lr_at(99) - 0.1).abs() < 1e-3);
        // A WSD cooldown sits at the end of the horizon, not of the run.
        let wsd = run("{steps: 100, batch_size: 2, block_size: 8, lr: 1.0, horizon: 500, schedule: {kind: wsd, warmup: 10, cooldown: 100, min_lr: 0.0}}").unwrap();
        assert_eq!(wsd.config.train.lr_at(99), 1.0);
    }

    #[test]
    fn bad_horizons_are_refused_with_the_field_named() {
        let err = run("{steps: 100, batch_size: 2, block_size: 8, lr: 1.0, horizon: 50, schedule: {kind: constant}}").unwrap_err();
        assert!(err.to_string().contains("train.horizon = 50"), "{err}");
        let err = run("{steps: 100, batch_size: 2, block_size: 8, lr: 1.0, horizon: 1000, schedule: {kind: cosine, warmup: 2000, min_lr: 0.1}}").unwrap_err();
        assert!(err.to_string().contains("warmup = 2000"), "{err}");
        let err = run("{steps: 100, batch_size: 2, block_size: 8, lr: 1.0, horizon: 1000, schedule: {kind: wsd, warmup: 10, cooldown: 2000, min_lr: 0.0}}").unwrap_err();
        assert!(err.to_string().contains("cooldown = 2000"), "{err}");
    }

    #[test]
    fn a_step_too_large_to_count_is_refused() {
        let err = run("{steps: 1, batch_size: 4611686018427387904, block_size: 8, lr: 1.0, schedule: {kind: constant}}").unwrap_err();
        assert!(err.to_string().contains("too large to count"), "{err}");
        let ok = run("{steps: 1, batch_size: 3, block_size: 8, grad_accum: 5, lr: 1.0, schedule: {kind: constant}}").unwrap();
        assert_eq!(ok.config.tokens_per_step(), 120);
    }

    #[test]
    fn model_names_are_unique_and_readable() {
        let spec = |yaml: &str| serde_yaml::from_str::<ModelSpec>(yaml).unwrap().label();
        assert_eq!(spec("{preset: tiny}"), "tiny");
        assert_eq!(
            spec("{n_layer: 4, n_head: 4, n_embd: 256}"),
            "custom-l4-h4-d256"
        );
        assert_eq!(
            spec("{n_layer: 2, n_head: 4, n_embd: 256}"),
            "custom-l2-h4-d256"
        );
        assert_eq!(
            spec("{preset: small, scale_attn_by_inverse_layer_idx: true}"),
            "small-invattn"
        );
        assert_eq!(spec("{preset: small, name: mine}"), "mine");
    }
}
