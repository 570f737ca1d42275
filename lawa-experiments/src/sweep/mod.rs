//! `lawa sweep`: one training trajectory per (model, lr, seed) feeding every averager of a
//! grid, results gathered into `results/<name>/` (curves.csv, summary.csv, sweep.yaml, figures).

pub mod config;
pub mod parallel;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::prepare::{prepare, AnotherDataset, PrepareOptions};
use crate::results::{
    read_rows, seed_gains, summarize, write_rows, CurveRow, CURVES_FILE, GAINS_FILE, SUMMARY_FILE,
};
use crate::train::run_dir::{claim_folder_as, is_temporary, Busy, Claim, LockMode, LOCK_FILE};
use crate::train::{status, train, RunStatus};
pub use config::{PlannedRun, SweepConfig};
pub use parallel::{Shard, SweepOptions};

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

/// What a results folder holds: a name lawa writes there.
fn sweep_owns(name: &str) -> bool {
    matches!(
        name,
        SWEEP_FILE
            | LOCK_FILE
            | CURVES_FILE
            | SUMMARY_FILE
            | GAINS_FILE
            | "runs"
            | crate::figures::FIGURES_DIR
    ) || is_temporary(name)
}

/// Gathers every run's curves into the sweep's `curves.csv` and writes `summary.csv`. A run
/// that has ended must have its curves: a missing or unreadable `curves.csv` is an error.
pub fn aggregate(dir: &Path, run_ids: &[String]) -> Result<()> {
    let mut curves: Vec<CurveRow> = Vec::new();
    let mut diverged = Vec::new();
    for id in run_ids {
        let run_dir = dir.join("runs").join(id);
        let outcome = status::read(&run_dir)?;
        let path = run_dir.join(CURVES_FILE);
        if outcome.is_none() && !path.exists() {
            continue; // not started yet
        }
        let rows: Vec<CurveRow> = read_rows(&path)
            .with_context(|| format!("run {id}: its evaluations cannot be gathered"))?;
        curves.extend(rows);
        if outcome.is_some_and(|o| o.status == RunStatus::Diverged) {
            diverged.push(id.clone());
        }
    }
    let summary = summarize(&curves, &diverged);
    let gains = seed_gains(&curves, &diverged);
    write_rows(&dir.join(CURVES_FILE), &curves)?;
    write_rows(&dir.join(SUMMARY_FILE), &summary)?;
    write_rows(&dir.join(GAINS_FILE), &gains)?;
    Ok(())
}

/// Runs the sweep in `path` (prepare data, train every run not yet finished, gather results).
pub fn run(path: &Path) -> Result<SweepReport> {
    run_with(path, &SweepOptions::default())
}

/// Runs the sweep in `path` as `options` say: the whole of it, one shard of its runs, or its
/// runs spread over several devices (see [`SweepOptions`]).
pub fn run_with(path: &Path, options: &SweepOptions) -> Result<SweepReport> {
    if !options.devices.is_empty() {
        parallel::run_on_devices(path, &options.devices)?;
        return run(path);
    }
    if options.shard.is_some() || options.worker.is_some() {
        return parallel::run_part(path, options);
    }
    let (cfg, runs, dir, _claim) = open(path, true, LockMode::Exclusive)?;
    let started = Instant::now();
    let diverged = train_all(&cfg, &runs, &dir, Gather::AfterEachRun)?;
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

/// Plans the sweep in `path` (see [`plan_with_data`]; `may_prepare` lets it prepare the data)
/// and claims its results folder in `mode`: the config, its runs, the folder and the claim.
fn open(
    path: &Path,
    may_prepare: bool,
    mode: LockMode,
) -> Result<(SweepConfig, Vec<PlannedRun>, PathBuf, Claim)> {
    // One read: the folder records the very text that was planned.
    let (text, cfg, runs) = plan_with_data(path, may_prepare)?;
    let dir = cfg.results_dir();
    let claim = claim_folder_as(
        &dir,
        SWEEP_FILE,
        &text,
        sweep_owns,
        "sweep",
        "give the sweep another name",
        mode,
    )?;
    Ok((cfg, runs, dir, claim))
}

/// Reads and plans the sweep in `path`, checks its devices, prepares its data when asked, and
/// checks the data against every run: everything that can be refused, before the results folder
/// is touched. Returns the file's text with its plan.
fn plan_with_data(
    path: &Path,
    may_prepare: bool,
) -> Result<(String, SweepConfig, Vec<PlannedRun>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let cfg = SweepConfig::parse(&text, path)?;
    let data_dir = cfg
        .data_dir()
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    let runs = cfg
        .plan(&data_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    for r in &runs {
        crate::train::config::ensure_available(r.plan.device)?;
    }
    if let Some(p) = cfg.data.prepare.as_ref().filter(|_| may_prepare) {
        let tokenizer = p
            .tokenizer
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: data.prepare.tokenizer: {e}", path.display()))?;
        if !(p.val_fraction > 0.0 && p.val_fraction < 1.0) {
            bail!(
                "{}: data.prepare.val_fraction = {} is invalid: must be between 0 and 1 (exclusive)",
                path.display(),
                p.val_fraction
            );
        }
        prepare(&PrepareOptions {
            out: Some(data_dir.clone()),
            val_fraction: p.val_fraction,
            ..PrepareOptions::new(p.source.clone(), tokenizer)
        })
        .map_err(|e| match e.downcast_ref::<AnotherDataset>() {
            Some(another) => anyhow::anyhow!(
                "{}: data.prepare: {another}; give another data.prepare.out, or replace that \
                 dataset (`lawa prepare {} --tokenizer {} --val-fraction {} --out {} --force`)",
                path.display(),
                shell_word(&p.source),
                shell_word(&p.tokenizer),
                p.val_fraction,
                shell_word(&data_dir.display().to_string())
            ),
            None => e.context(format!("{}: data.prepare", path.display())),
        })?;
    }
    let data = lawa_core::data::Dataset::open(&data_dir).with_context(|| match may_prepare {
        true => String::new(),
        false => format!(
            "the sweep's data must be prepared before its shards start (`lawa prepare`, or `lawa sweep {}` once)",
            path.display()
        ),
    })?;
    for r in &runs {
        r.plan
            .config
            .model_config(data.meta().vocab_size as usize)?;
        data.split(lawa_core::data::Split::Val)
            .check_block(r.plan.config.train.block_size)?;
    }
    Ok((text, cfg, runs))
}

/// What [`train_all`] does besides training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gather {
    /// Gathers the sweep's results after each run (the whole sweep, holding its folder alone).
    AfterEachRun,
    /// Leaves the results to a final `lawa sweep` (a shard).
    Never,
    /// As `Never`, and passes over runs another process is training (a device worker).
    NeverSkipBusy,
}

/// Trains every run not yet ended, one after the other; returns the ids of the runs that
/// diverged.
fn train_all(
    cfg: &SweepConfig,
    runs: &[PlannedRun],
    dir: &Path,
    gather: Gather,
) -> Result<Vec<String>> {
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let total_steps: u64 = runs.iter().map(|r| r.plan.config.train.steps).sum();
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
        let outcome = train(&planned.plan, |step, _| {
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
        });
        done_steps += planned.plan.config.train.steps;
        let outcome = match outcome {
            Err(e) if gather == Gather::NeverSkipBusy && e.downcast_ref::<Busy>().is_some() => {
                tracing::info!("run {}: another worker has it", planned.id);
                continue;
            }
            other => other.with_context(|| format!("run {}", planned.id))?,
        };
        if outcome.status == RunStatus::Diverged {
            diverged.push(planned.id.clone());
        }
        if gather == Gather::AfterEachRun {
            aggregate(dir, &ids)?;
        }
    }
    Ok(diverged)
}

/// `text` as one word of a shell command: as it is when it holds nothing a shell reads
/// specially, else in single quotes.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=+,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("data/sotu-bpe4096"), "data/sotu-bpe4096");
        assert_eq!(shell_word("my data"), "'my data'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
