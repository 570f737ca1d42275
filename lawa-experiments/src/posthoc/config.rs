//! A post-hoc study as written in YAML (`lawa posthoc study.yaml`): a series of checkpoints, the
//! dataset to score them on, the LAWA grid, and what a step costs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::train::config::check_name;

/// One post-hoc study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosthocConfig {
    /// Results go to `<results>/<name>/`; also the `run` column of the CSVs.
    pub name: String,
    /// A folder of step-numbered checkpoint folders (see [`Series`](super::series::Series)).
    pub checkpoints: PathBuf,
    /// A dataset prepared with the checkpoints' tokenizer (`lawa prepare --tokenizer
    /// tokenizer.json` for Pythia).
    pub data: PathBuf,
    /// The `model` column [default: the checkpoints folder's name].
    #[serde(default)]
    pub model: Option<String>,
    /// The run's peak learning rate, for the `lr` column [default: 0, unknown].
    #[serde(default)]
    pub lr: f64,
    /// Training tokens per step, for the `tokens` column (Pythia: 2,097,152) [default: 0].
    #[serde(default)]
    pub tokens_per_step: u64,
    /// Evaluation.
    pub eval: PosthocEval,
    /// The LAWA grid.
    pub lawa: LawaGrid,
    /// Which steps of the series to evaluate [default: all].
    #[serde(default)]
    pub steps: StepRange,
    /// Zero-shot task files scored at every evaluation too (`[layout:]file.jsonl`; see
    /// `lawa eval --task`), with the dataset's tokenizer.
    #[serde(default)]
    pub tasks: Vec<crate::tasks::TaskSpec>,
    /// GPU-hours one training step cost (Pythia's totals over 143,000 steps), to express the
    /// compute saved in GPU-hours.
    #[serde(default)]
    pub gpu_hours_per_step: Option<f64>,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "auto")]
    pub device: String,
    /// `f32` or `bf16` compute.
    #[serde(default = "f32")]
    pub precision: String,
    /// Parent folder of the results [default: results].
    #[serde(default)]
    pub results: Option<PathBuf>,
}

fn auto() -> String {
    "auto".into()
}

fn f32() -> String {
    "f32".into()
}

/// How the checkpoints are scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosthocEval {
    /// Fixed validation windows, the same for every checkpoint.
    pub windows: usize,
    /// Tokens per window [default: the model's longest sequence].
    #[serde(default)]
    pub block_size: Option<usize>,
    /// Windows per forward pass.
    #[serde(default = "one")]
    pub batch_size: usize,
}

fn one() -> usize {
    1
}

/// LAWA configurations: every (k, nu).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LawaGrid {
    /// Window sizes (checkpoints averaged).
    pub k: Vec<usize>,
    /// Spacings, in steps (multiples of the series' spacing).
    pub nu: Vec<u64>,
}

/// A range of steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRange {
    /// First step evaluated.
    #[serde(default)]
    pub from: Option<u64>,
    /// Last step evaluated.
    #[serde(default)]
    pub to: Option<u64>,
    /// Only steps that are multiples of this.
    #[serde(default)]
    pub every: Option<u64>,
}

impl StepRange {
    /// Whether `step` is in the range.
    pub fn contains(&self, step: u64) -> bool {
        self.from.is_none_or(|f| step >= f)
            && self.to.is_none_or(|t| step <= t)
            && self.every.is_none_or(|e| step.is_multiple_of(e))
    }
}

impl PosthocConfig {
    /// Reads and checks a study file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let mut cfg: PosthocConfig =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        crate::tasks::format::name_apart(&mut cfg.tasks)
            .map_err(|e| anyhow::anyhow!("{}: tasks: {e}", path.display()))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        check_name("name", &self.name)?;
        if let Some(m) = &self.model {
            check_name("model", m)?;
        }
        if self.lawa.k.is_empty() || self.lawa.nu.is_empty() {
            bail!("lawa: k and nu need at least one value each");
        }
        if let Some(k) = self.lawa.k.iter().find(|&&k| k == 0) {
            bail!("lawa.k = {k} is invalid: a window holds at least one checkpoint");
        }
        if self.lawa.nu.contains(&0) {
            bail!("lawa.nu = 0 is invalid: checkpoints are at least one step apart");
        }
        if self.eval.windows == 0 || self.eval.batch_size == 0 || self.eval.block_size == Some(0) {
            bail!("eval: windows, batch_size and block_size must be at least 1");
        }
        if self.steps.every == Some(0) {
            bail!("steps.every = 0 is invalid: must be at least 1");
        }
        if let Some(g) = self.gpu_hours_per_step {
            if !(g > 0.0 && g.is_finite()) {
                bail!("gpu_hours_per_step = {g} is invalid: must be positive");
            }
        }
        crate::train::config::parse_device(&self.device)?;
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!(
                "lr = {} is invalid: the run's peak learning rate is positive (or 0: unknown)",
                self.lr
            );
        }
        self.precision
            .parse::<lawa_models::Precision>()
            .map_err(|e| anyhow::anyhow!("precision = {:?} is invalid: {e}", self.precision))?;
        Ok(())
    }

    /// The results folder.
    pub fn results_dir(&self) -> PathBuf {
        self.results
            .clone()
            .unwrap_or_else(|| PathBuf::from("results"))
            .join(&self.name)
    }

    /// The `model` column.
    pub fn model_label(&self) -> String {
        self.model.clone().unwrap_or_else(|| {
            self.checkpoints
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }
}
