//! A run's checkpoint: model, optimizer, averagers, sampler position and counters, written
//! into a staging folder and renamed into place, so a crash leaves the previous checkpoint or
//! the complete new one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::averaging::{AveragerSet, Weights};
use lawa_core::data::SamplerState;
use lawa_core::optim::AdamW;
use lawa_models::Gpt;
use serde::{Deserialize, Serialize};

/// Name of the checkpoint folder inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const OLD_DIR: &str = ".checkpoint.old";
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
}

/// The checkpoint folder of a run, if any: `checkpoint/`, or the previous one if a crash came
/// between the two renames of a save.
pub fn find(run_dir: &Path) -> Option<PathBuf> {
    [CHECKPOINT_DIR, OLD_DIR]
        .iter()
        .map(|d| run_dir.join(d))
        .find(|d| d.join(STATE_FILE).is_file())
}

/// Writes a checkpoint of the run into `run_dir/checkpoint`.
pub fn save(
    run_dir: &Path,
    gpt: &Gpt,
    optimizer: &AdamW,
    averagers: &AveragerSet,
    state: &TrainerState,
) -> Result<()> {
    let staging = run_dir.join(format!(".checkpoint.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| -> Result<()> {
        gpt.save_pretrained(&staging)?;
        optimizer.save(&staging.join(OPTIMIZER_FILE))?;
        averagers.save(&staging)?;
        let json = serde_json::to_vec_pretty(state)?;
        lawa_core::fsutil::write_atomic(&staging.join(STATE_FILE), &json)?;
        let current = run_dir.join(CHECKPOINT_DIR);
        let old = run_dir.join(OLD_DIR);
        if current.exists() {
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&current, &old)?;
        }
        std::fs::rename(&staging, &current)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.with_context(|| format!("{}: cannot write the checkpoint", run_dir.display()))
}

/// Restores model weights, optimizer and averagers from the checkpoint in `dir`, checking that
/// it was made for this model.
pub fn load(
    dir: &Path,
    gpt: &Gpt,
    optimizer: &mut AdamW,
    averagers: &mut AveragerSet,
    weights: &Weights,
) -> Result<TrainerState> {
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
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: corrupt", path.display()))
}
