//! A sweep as written in YAML: data, models, grids over learning rate and seed, the training
//! recipe, and a grid of averagers that every training trajectory feeds.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::averaging::Storage;
use serde::{Deserialize, Serialize};

use crate::train::config::{check_name, CheckpointSpec, EvalSpec, ModelSpec, SetByGrid, TrainSpec};
use crate::train::{AveragerSpec, RunConfig, RunPlan, SwaStart};

/// One sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Results go to `<results>/<name>/`.
    pub name: String,
    /// The dataset.
    pub data: DataSpec,
    /// Models to train (presets with optional overrides).
    pub models: Vec<ModelSpec>,
    /// Peak learning rates.
    pub lrs: Vec<f64>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// The recipe (its `lr` and `seed` are set by the grid).
    pub train: TrainRecipe,
    /// Evaluation.
    pub eval: EvalSpec,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// The averagers every run evaluates.
    pub averagers: AveragerGrid,
    /// Where averagers keep snapshots: `training` or `cpu`.
    #[serde(default)]
    pub averager_storage: Storage,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "auto")]
    pub device: String,
    /// Parent folder of the results [default: results].
    #[serde(default)]
    pub results: Option<PathBuf>,
}

fn auto() -> String {
    "auto".into()
}

/// Where the tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A prepared dataset folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Or a corpus to prepare first (skipped when already prepared).
    #[serde(default)]
    pub prepare: Option<PrepareSpec>,
}

/// `lawa prepare` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareSpec {
    /// Corpus path or `sotu`.
    pub source: String,
    /// `gpt2`, `bpe:N` or `byte`.
    pub tokenizer: String,
    /// Validation fraction.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Output folder [default: data/SOURCE-TOKENIZER].
    #[serde(default)]
    pub out: Option<PathBuf>,
}

fn default_val_fraction() -> f64 {
    0.05
}

/// The recipe of [`TrainSpec`] without `lr` and `seed`, which the grid sets, and with a schedule
/// whose final rate is a fraction of each run's peak: every other option is [`TrainSpec`]'s own.
pub type TrainRecipe = TrainSpec<ScheduleRecipe, SetByGrid, SetByGrid>;

/// A schedule whose final rate is a fraction of each run's peak (the paper's min_lr = lr / 10).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleRecipe {
    /// Warm-up then cosine to `min_lr_ratio * lr`.
    Cosine {
        /// Warm-up steps.
        warmup: u64,
        /// Final rate as a fraction of the peak.
        min_lr_ratio: f64,
    },
    /// Warm-up then constant.
    Constant {
        /// Warm-up steps.
        #[serde(default)]
        warmup: u64,
    },
    /// Warm-up, constant, linear cooldown to `min_lr_ratio * lr` over the last `cooldown` steps.
    Wsd {
        /// Warm-up steps.
        warmup: u64,
        /// Cooldown steps.
        cooldown: u64,
        /// Final rate as a fraction of the peak.
        min_lr_ratio: f64,
    },
}

impl ScheduleRecipe {
    fn for_lr(self, lr: f64) -> lawa_core::optim::Schedule {
        use lawa_core::optim::Schedule;
        match self {
            ScheduleRecipe::Cosine {
                warmup,
                min_lr_ratio,
            } => Schedule::Cosine {
                warmup,
                min_lr: lr * min_lr_ratio,
                decay_end: None,
            },
            ScheduleRecipe::Constant { warmup } => Schedule::Constant { warmup },
            ScheduleRecipe::Wsd {
                warmup,
                cooldown,
                min_lr_ratio,
            } => Schedule::Wsd {
                warmup,
                cooldown,
                min_lr: lr * min_lr_ratio,
            },
        }
    }
}

/// A grid of averagers: every combination listed, plus any single ones under `also`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AveragerGrid {
    /// LAWA over every (k, nu).
    #[serde(default)]
    pub lawa: Option<LawaGrid>,
    /// EMA over every decay.
    #[serde(default)]
    pub ema: Option<EmaGrid>,
    /// SWA over every start.
    #[serde(default)]
    pub swa: Option<SwaGrid>,
    /// More averagers, one by one.
    #[serde(default)]
    pub also: Vec<AveragerSpec>,
}

/// LAWA grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LawaGrid {
    /// Window sizes.
    pub k: Vec<usize>,
    /// Spacings, in steps.
    pub nu: Vec<u64>,
}

/// EMA grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaGrid {
    /// Decays.
    pub decay: Vec<f64>,
    /// The authors' warm-up form.
    #[serde(default)]
    pub warmup: bool,
}

/// SWA grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaGrid {
    /// Starts: steps, or fractions of training (0.75 = "SWA late").
    pub start: Vec<SwaStart>,
    /// Sampling interval.
    #[serde(default = "ten")]
    pub every: u64,
}

fn ten() -> u64 {
    10
}

impl AveragerGrid {
    /// Every averager of the grid, in a fixed order.
    pub fn specs(&self) -> Result<Vec<AveragerSpec>> {
        let mut out = Vec::new();
        if let Some(g) = &self.lawa {
            if g.k.is_empty() || g.nu.is_empty() {
                bail!("averagers.lawa: k and nu need at least one value each");
            }
            for &nu in &g.nu {
                for &k in &g.k {
                    out.push(AveragerSpec::Lawa {
                        k,
                        nu,
                        start: 0,
                        storage: None,
                    });
                }
            }
        }
        if let Some(g) = &self.ema {
            if g.decay.is_empty() {
                bail!("averagers.ema.decay: needs at least one value");
            }
            for &decay in &g.decay {
                out.push(AveragerSpec::Ema {
                    decay,
                    warmup: g.warmup,
                    every: 1,
                    start: 0,
                    storage: None,
                });
            }
        }
        if let Some(g) = &self.swa {
            if g.start.is_empty() {
                bail!("averagers.swa.start: needs at least one value");
            }
            for &start in &g.start {
                out.push(AveragerSpec::Swa {
                    start,
                    every: g.every,
                    storage: None,
                });
            }
        }
        out.extend(self.also.iter().cloned());
        Ok(out)
    }
}

/// One run of the grid.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Its id, e.g. `tiny-lr0.006-s0`.
    pub id: String,
    /// Its checked config.
    pub plan: RunPlan,
}

impl SweepConfig {
    /// Reads a sweep file (its values are checked by [`plan`](Self::plan)); errors name the
    /// file and field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses the text of the sweep file `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The results folder of this sweep.
    pub fn results_dir(&self) -> PathBuf {
        self.results
            .clone()
            .unwrap_or_else(|| PathBuf::from("results"))
            .join(&self.name)
    }

    /// The dataset folder (to be prepared when `data.prepare` is given).
    pub fn data_dir(&self) -> Result<PathBuf> {
        match (&self.data.path, &self.data.prepare) {
            (Some(p), None) => Ok(p.clone()),
            (None, Some(p)) => Ok(p.out.clone().unwrap_or_else(|| {
                PathBuf::from("data").join(format!(
                    "{}-{}",
                    Path::new(&p.source)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "corpus".into()),
                    p.tokenizer.replace(':', "")
                ))
            })),
            _ => bail!("data: give exactly one of `path` (a prepared dataset) or `prepare`"),
        }
    }

    /// Every run of the grid (models x lrs x seeds), each checked once.
    pub fn plan(&self, data_dir: &Path) -> Result<Vec<PlannedRun>> {
        check_name("name", &self.name)?;
        for (field, empty) in [
            ("models", self.models.is_empty()),
            ("lrs", self.lrs.is_empty()),
            ("seeds", self.seeds.is_empty()),
        ] {
            if empty {
                bail!("{field}: the grid is empty; give at least one value");
            }
        }
        self.data_dir()?;
        let averagers = self.averagers.specs()?;
        let r = &self.train;
        let mut runs = Vec::new();
        let labels: Vec<String> = self.models.iter().map(ModelSpec::label).collect();
        for (i, label) in labels.iter().enumerate() {
            if let Some(j) = labels[..i].iter().position(|l| l == label) {
                bail!(
                    "models[{j}] and models[{i}] are both named {label:?}; give one a `name:` (or list each model once)"
                );
            }
        }
        for (model, model_name) in self.models.iter().zip(&labels) {
            for &lr in &self.lrs {
                for &seed in &self.seeds {
                    let id = format!("{model_name}-lr{lr}-s{seed}");
                    if runs.iter().any(|r: &PlannedRun| r.id == id) {
                        bail!("the grid repeats run {id} (a duplicate lr or seed)");
                    }
                    let config = RunConfig {
                        name: id.clone(),
                        data: data_dir.to_owned(),
                        model: model.clone(),
                        train: r.with_run(lr, r.schedule.for_lr(lr), seed),
                        eval: self.eval.clone(),
                        checkpoint: self.checkpoint.clone(),
                        averagers: averagers.clone(),
                        averager_storage: self.averager_storage,
                        device: self.device.clone(),
                        out: Some(self.results_dir().join("runs").join(&id)),
                    };
                    let plan = config
                        .plan()
                        .map_err(|e| anyhow::anyhow!("run {id}: {e:#}"))?;
                    runs.push(PlannedRun { id, plan });
                }
            }
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lawa_models::Kernel;

    /// The training step's options reach every run of the grid as they were written, and the
    /// runs of a sweep that leaves them out take the defaults.
    #[test]
    fn the_step_options_reach_every_run() {
        let yaml = |extra: &str| {
            format!(
                "name: s\ndata: {{path: d}}\nmodels: [{{preset: tiny}}]\nlrs: [1.0e-3, 1.0e-2]\nseeds: [0, 1]\ntrain:\n  steps: 10\n  batch_size: 2\n  block_size: 16\n  schedule: {{kind: constant}}\n{extra}eval: {{every: 5, windows: 4}}\naveragers:\n  lawa: {{k: [2], nu: [2]}}\ndevice: cpu\n"
            )
        };
        let plan = |extra: &str| {
            SweepConfig::parse(&yaml(extra), Path::new("s.yaml"))
                .unwrap()
                .plan(Path::new("d"))
                .unwrap()
        };
        let runs = plan(
            "  loss_chunk: 64\n  loss_kernel: fused\n  norm_kernel: fused\n  linear_kernel: fused\n",
        );
        assert_eq!(runs.len(), 4);
        for r in &runs {
            let t = &r.plan.config.train;
            assert_eq!(t.loss_chunk, Some(64));
            assert_eq!(
                [t.loss_kernel, t.norm_kernel, t.linear_kernel],
                [Kernel::Fused; 3]
            );
            assert!(!t.cuda_graph);
        }
        for r in plan("  allreduce_fp32: true\n") {
            assert!(r.plan.config.train.allreduce_fp32);
        }
        for r in plan("") {
            let t = &r.plan.config.train;
            assert!(!t.allreduce_fp32);
            assert_eq!(t.loss_chunk, None);
            assert_eq!(
                [t.loss_kernel, t.norm_kernel, t.linear_kernel],
                [Kernel::Aten; 3]
            );
        }
        for extra in ["  lr: 0.1\n", "  seed: 3\n"] {
            let e = SweepConfig::parse(&yaml(extra), Path::new("s.yaml")).unwrap_err();
            let message = format!("{e:#}");
            assert!(
                message.contains("s.yaml: train: a sweep's grid sets each run's `lr` and `seed`"),
                "{message}"
            );
        }
        // Written as nothing, they are as absent.
        let runs = plan("  lr: ~\n");
        assert_eq!(runs[3].plan.config.train.lr, 1.0e-2);
        assert_eq!(runs[3].plan.config.train.seed, 1);
    }
}
