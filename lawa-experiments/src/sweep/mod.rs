//! `lawa sweep`: one training trajectory per (model, lr, seed) feeding every averager of a
//! grid, results gathered into `results/<name>/` (curves.csv, summary.csv, sweep.yaml, figures).

pub mod config;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::commands::prepare::{self, PrepareArgs};
use crate::train::trainer::{finished_outcome, RunStatus};
use crate::train::{curves::HEADER, train};
pub use config::SweepConfig;

/// The copy of the sweep's config in its results folder.
pub const SWEEP_FILE: &str = "sweep.yaml";

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// The results folder.
    pub dir: PathBuf,
    /// Runs in the grid.
    pub runs: usize,
    /// Of which diverged.
    pub diverged: Vec<String>,
}

/// Claims the results folder: a copy of the exact config, refusing a folder of another config.
fn claim(dir: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join(SWEEP_FILE);
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing == text => Ok(()),
        Ok(_) => bail!(
            "{}: holds the results of a different config; give the sweep another name or delete the folder",
            dir.display()
        ),
        Err(_) => lawa_core::fsutil::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display())),
    }
}

/// Gathers every run's curves into the sweep's `curves.csv` and writes `summary.csv`.
pub fn aggregate(dir: &Path, run_ids: &[String]) -> Result<()> {
    let mut curves = String::from(HEADER);
    curves.push('\n');
    let mut diverged = Vec::new();
    for id in run_ids {
        let run_dir = dir.join("runs").join(id);
        if let Ok(text) = std::fs::read_to_string(run_dir.join("curves.csv")) {
            for line in text.lines().skip(1) {
                curves.push_str(line);
                curves.push('\n');
            }
        }
        if finished_outcome(&run_dir).is_some_and(|o| o.status == RunStatus::Diverged) {
            diverged.push(id.clone());
        }
    }
    let summary = summary::summarize(&curves, &diverged)?;
    lawa_core::fsutil::write_atomic(&dir.join("curves.csv"), curves.as_bytes())?;
    lawa_core::fsutil::write_atomic(&dir.join("summary.csv"), summary.as_bytes())?;
    Ok(())
}

/// Runs the sweep in `path` (prepare data, train every run not yet finished, gather results).
pub fn run(path: &Path) -> Result<SweepReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let cfg = SweepConfig::load(path)?;
    let data_dir = cfg.data_dir()?;
    let runs = cfg
        .plan(&data_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    if let Some(p) = &cfg.data.prepare {
        prepare::run(&PrepareArgs {
            source: p.source.clone(),
            out: Some(data_dir.clone()),
            tokenizer: p
                .tokenizer
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: data.prepare.tokenizer: {e}", path.display()))?,
            val_fraction: p.val_fraction,
            force: false,
        })?;
    }
    // Check the data against every run before anything is written to the results folder.
    let data = lawa_core::data::Dataset::open(&data_dir)?;
    for r in &runs {
        r.config.model_config(data.meta().vocab_size as usize)?;
        data.split(lawa_core::data::Split::Val)
            .check_block(r.config.train.block_size)?;
    }
    let dir = cfg.results_dir();
    claim(&dir, &text)?;
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let total_steps: u64 = runs.iter().map(|r| r.config.train.steps).sum();
    let started = Instant::now();
    let mut done_steps = 0u64;
    let mut diverged = Vec::new();
    for (i, planned) in runs.iter().enumerate() {
        tracing::info!(
            "sweep {}: run {} of {}: {}",
            cfg.name,
            i + 1,
            runs.len(),
            planned.id
        );
        let before = done_steps;
        let mut last_log = Instant::now();
        let outcome = train(&planned.config, |step, _| {
            if !crate::progress::interactive() && last_log.elapsed().as_secs() >= 30 {
                last_log = Instant::now();
                let done = before + step;
                let elapsed = started.elapsed().as_secs_f64();
                tracing::info!(
                    "sweep {}: {:.0} % of all steps, ETA {:.0} s",
                    cfg.name,
                    100.0 * done as f64 / total_steps as f64,
                    elapsed / done.max(1) as f64 * (total_steps - done) as f64
                );
            }
        })
        .with_context(|| format!("run {}", planned.id))?;
        if outcome.status == RunStatus::Diverged {
            diverged.push(planned.id.clone());
        }
        done_steps += planned.config.train.steps;
        aggregate(&dir, &ids)?;
    }
    let figures = crate::figures::render_all(&dir).context("drawing the figures")?;
    tracing::info!(
        "sweep {}: {} runs ({} diverged) in {:.0} s; {} figure files; results in {}",
        cfg.name,
        runs.len(),
        diverged.len(),
        started.elapsed().as_secs_f64(),
        figures.len(),
        dir.display()
    );
    Ok(SweepReport {
        dir,
        runs: runs.len(),
        diverged,
    })
}
