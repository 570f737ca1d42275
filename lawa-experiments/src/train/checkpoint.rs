//! A run's checkpoint: model, optimizer, averagers, sampler position, counters and the identity
//! of the dataset, written into a staging folder and published whole (synced, renamed), so a
//! crash or a power cut leaves the previous checkpoint or the complete new one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::averaging::{AveragerSet, Weights};
use lawa_core::checkpoint::{finish_publish, publish_dir, staging_dir, write_atomic};
use lawa_core::data::SamplerState;
use lawa_core::optim::AdamW;
use lawa_models::Gpt;
use serde::{Deserialize, Serialize};

/// Name of the checkpoint folder inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "trainer.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Counters and positions saved beside the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Where the batch sampler is.
    pub sampler: SamplerState,
    /// Seconds spent training so far, across resumes.
    pub wall_time: f64,
    /// The dataset the run trains on ([`Dataset::identity`](lawa_core::data::Dataset::identity)).
    #[serde(default)]
    pub dataset: String,
}

/// The checkpoint folder of a run, if any, after completing a save a crash interrupted (see
/// [`finish_publish`]): call it only while holding the run folder.
pub fn recover(run_dir: &Path) -> Result<Option<PathBuf>> {
    let target = run_dir.join(CHECKPOINT_DIR);
    let found = finish_publish(&target, |d| d.join(STATE_FILE).is_file())
        .with_context(|| format!("{}: cannot complete the last save", target.display()))?;
    if !found && target.exists() {
        // A save publishes whole folders: one without its trainer.json was damaged since.
        bail!(
            "{}: no {STATE_FILE} (the checkpoint was damaged after it was written) and no \
             previous checkpoint to fall back on; restore it, or remove the run folder to train \
             from step 0",
            target.display()
        );
    }
    Ok(found.then_some(target))
}

/// The pieces of a run a checkpoint holds.
pub struct Parts<'a> {
    /// The model being trained.
    pub gpt: &'a Gpt,
    /// Its optimizer.
    pub optimizer: &'a AdamW,
    /// The averagers.
    pub averagers: &'a AveragerSet,
    /// Counters.
    pub state: &'a TrainerState,
    /// The tokenizer of the data, when it can be named (see [`crate::vocabulary::record`]).
    pub tokenizer: Option<&'a str>,
}

/// Writes the model alone into `dir` as a Hugging Face checkpoint, its config naming the
/// data's `tokenizer` when it can be named (see [`crate::vocabulary::record`]).
pub fn save_model(gpt: &Gpt, dir: &Path, tokenizer: Option<&str>) -> Result<()> {
    gpt.save_pretrained(dir)?;
    match tokenizer {
        Some(tokenizer) => crate::vocabulary::record(dir, tokenizer),
        None => Ok(()),
    }
}

/// Writes a checkpoint of the run into `run_dir/checkpoint`.
pub fn save(run_dir: &Path, parts: Parts) -> Result<()> {
    let target = run_dir.join(CHECKPOINT_DIR);
    let result = (|| -> Result<()> {
        let staging = staging_dir(&target)?;
        let written = (|| -> Result<()> {
            save_model(parts.gpt, &staging, parts.tokenizer)?;
            parts.optimizer.save(&staging.join(OPTIMIZER_FILE))?;
            parts.averagers.save(&staging)?;
            let json = serde_json::to_vec_pretty(parts.state)?;
            write_atomic(&staging.join(STATE_FILE), &json)?;
            publish_dir(&staging, &target)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        written
    })();
    result.with_context(|| format!("{}: cannot write the checkpoint", run_dir.display()))
}

/// Restores model weights, optimizer and averagers from the checkpoint in `dir`, checking that
/// it was made for this model, this dataset and a step within the run's `steps`.
pub fn load(
    dir: &Path,
    gpt: &Gpt,
    optimizer: &mut AdamW,
    averagers: &mut AveragerSet,
    weights: &Weights,
    expect: &Expected,
) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let state: TrainerState =
        serde_json::from_slice(&text).with_context(|| format!("{}: corrupt", path.display()))?;
    if state.step > expect.steps {
        bail!(
            "{}: the checkpoint is at step {}, after the run's last step {}; it belongs to a longer run (use another `out`/`name`)",
            dir.display(),
            state.step,
            expect.steps
        );
    }
    if !state.dataset.is_empty() && state.dataset != expect.dataset {
        bail!(
            "{}: the run was trained on another dataset ({}); the data folder now holds {}. Re-prepared data would silently change the run: restore the data, or train into another `out`",
            dir.display(),
            state.dataset,
            expect.dataset
        );
    }
    let saved = lawa_models::hf::read_config(&dir.join("config.json"))?;
    if &saved != gpt.config() {
        bail!(
            "{}: checkpoint of another model shape ({} layers x {} wide, vocab {}), this run builds {} layers x {} wide, vocab {}; use another run folder",
            dir.display(),
            saved.n_layer,
            saved.n_embd,
            saved.vocab_size,
            gpt.config().n_layer,
            gpt.config().n_embd,
            gpt.config().vocab_size
        );
    }
    gpt.load_hf_weights(&dir.join("model.safetensors"))?;
    optimizer.load(&dir.join(OPTIMIZER_FILE))?;
    averagers.load(dir, weights)?;
    Ok(state)
}

/// What a checkpoint must agree with to be resumed.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The run's total steps.
    pub steps: u64,
    /// The dataset's identity.
    pub dataset: String,
}
